"""Reserve, claim, release, extend and direct purchases: Redis for stock, SQL for the record.

The order of the two writes is chosen so that a crash between them can only *under*-sell:

* Taking stock (reserve, claim, buy, extend): the Lua script first, then the SQL commit. The
  writer holds the deal's shared fence from before it trusts the Redis result until its commit,
  and checks the live state's generation under it, so a rebuild from SQL never misses it.
  If the SQL side fails before its commit, the take is undone by purchase token (or by
  generation); if the commit itself fails (its outcome unknown), the deal's live state is
  dropped and rebuilt from SQL. A process killed in between leaves units held that SQL does not
  know: a hold comes back when it ends, sold units when the reconciler rebuilds the deal.
* Giving stock back (release): the SQL commit first, then the script. Killed in between, the
  hold comes back when it ends.

See docs/consistency.md for the whole argument.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import Connection, func, or_, select
from sqlalchemy.exc import IntegrityError

from app import events as ev
from app.idempotency import Idempotency
from app.money import minor_to_decimal
from app.store import purchase_rows as rows
from app.store.db import Database
from app.store.models import Deal, Purchase, utcnow
from app.timeutil import from_ms, to_ms

from .errors import (
    AlreadyClaimed,
    HoldNotActive,
    IdempotencyReplay,
    MaxHoldReached,
    NotHeld,
    NotLoaded,
    PurchaseNotFound,
    Stale,
    Unavailable,
)
from .group_commit import CommitUncertain, GroupCommitter
from .rebuild import Rebuilder
from .stock import LiveStock, Take

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often a write is retried when the deal's live state was rebuilt under it.
ATTEMPTS = 3

# Crockford's base32: no I, L, O or U, so a coupon read aloud is not misread.
COUPON_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_token() -> str:
    """A purchase id: 144 random bits, also the reservation token."""
    return secrets.token_urlsafe(18)


def new_coupon_code() -> str:
    """80 random bits in four groups of four: unique and unguessable."""
    raw = "".join(secrets.choice(COUPON_ALPHABET) for _ in range(16))
    return "-".join(raw[i : i + 4] for i in range(0, 16, 4))


def _insert(values: dict, fence: tuple[int, int] | None, connection: Connection) -> Purchase:
    """A reservation's row (taking the deal's fence in the same statement); the answer is built
    from the same values."""
    values = dict(values, id=rows.insert_purchase(connection, values, fence))
    return rows.record(values)


def _v1_row(token: str, account_id: int, deal_id: int, units: int, take: Take, now: datetime) -> dict:
    """The columns every v1 purchase row starts with, whatever its first state."""
    return {
        "token": token,
        "account_id": account_id,
        "deal_id": deal_id,
        "source": "v1",
        "units": units,
        "price_per_unit": take.price,
        "currency": take.currency,
        "created_at": now,
    }


def _instant(now: datetime | None) -> datetime:
    """Now, to the millisecond: the precision Redis keeps, so both stores hold the same instant."""
    return from_ms(to_ms(now or utcnow()))


def effective_state(purchase: Purchase, now: datetime) -> str:
    """A reservation whose hold has ended is expired, whether or not the sweep has run."""
    if (
        purchase.fulfillment_state == "reserved"
        and purchase.reserved_until is not None
        and purchase.reserved_until <= now
    ):
        return "expired"
    return purchase.fulfillment_state


@dataclass(frozen=True)
class HoldPolicy:
    ttl_seconds: int = 300
    max_hold_seconds: int = 900


class PurchaseService:
    def __init__(
        self,
        db: Database,
        stock: LiveStock,
        rebuilder: Rebuilder,
        policy: HoldPolicy = HoldPolicy(),
        events: ev.Events = ev.NULL_EVENTS,
        committer: GroupCommitter | None = None,
    ) -> None:
        self.db = db
        #: When set, reservations are committed in batches (group_commit.py).
        self.committer = committer
        self.stock = stock
        self.rebuilder = rebuilder
        self.policy = policy
        self.events = events

    # -- writes ---------------------------------------------------------------------------

    def reserve(
        self,
        account_id: int,
        deal_id: int,
        units: int,
        *,
        idempotency: Idempotency | None = None,
        now: datetime | None = None,
    ) -> Purchase:
        now = _instant(now)
        token = new_token()
        ends_ms = to_ms(now) + self.policy.ttl_seconds * 1000

        for _ in range(ATTEMPTS):
            take = self.with_loaded(
                deal_id,
                lambda: self.stock.reserve(deal_id, account_id, token, units, to_ms(now), ends_ms),
                now,
            )
            values = _v1_row(token, account_id, deal_id, units, take, now) | {
                "fulfillment_state": "reserved",
                "payment_state": "pending",
                "reserved_at": now,
                "reserved_until": from_ms(ends_ms),
            }
            try:
                if self.committer is not None:
                    purchase = self._group_commit(values, take, idempotency)
                else:
                    purchase = self.commit_takes(
                        [take],
                        functools.partial(_insert, values, self.db.shared_fence(deal_id)),
                        undo=lambda: self.stock.release(deal_id, token),
                        idempotency=idempotency,
                        write_takes_fence=True,
                    )
            except Stale:
                continue
            if take.needs_index:
                self._best_effort(self.stock.index, deal_id, ends_ms)
            self._emit(ev.Event(ev.PURCHASE_RESERVED, account_id, deal_id, purchase=purchase))
            return purchase
        raise Unavailable("the deal's live state kept being rebuilt; retry")

    def create(
        self,
        account_id: int,
        deal_id: int,
        units: int,
        *,
        user_id: str,
        credit_card_id: str | None,
        expected_price_per_unit: int,
        session_id: str | None = None,
        idempotency: Idempotency | None = None,
        now: datetime | None = None,
    ) -> Purchase:
        """A direct purchase: stock taken and the purchase fulfilled in one step."""
        now = _instant(now)
        token = new_token()

        def write(take: Take, connection: Connection) -> Purchase:
            values = _v1_row(token, account_id, deal_id, units, take, now) | {"session_id": session_id}
            values |= self._fulfilment(values, user_id, credit_card_id, now)
            values["id"] = rows.insert_purchase(connection, values, self.db.shared_fence(deal_id))
            codes = self._add_lines(connection, values, take)
            return rows.record(values, codes)

        for _ in range(ATTEMPTS):
            take = self.with_loaded(
                deal_id,
                lambda: self.stock.buy(deal_id, account_id, units, to_ms(now), user_id, expected_price_per_unit),
                now,
            )
            try:
                purchase = self.commit_takes(
                    [take],
                    functools.partial(write, take),
                    undo=functools.partial(self.stock.unbuy, take),
                    idempotency=idempotency,
                    write_takes_fence=True,
                )
            except Stale:
                continue
            self._emit(ev.Event(ev.PURCHASE_FULFILLED, account_id, deal_id, purchase=purchase, via="create"))
            return purchase
        raise Unavailable("the deal's live state kept being rebuilt; retry")

    def claim(
        self,
        account_id: int,
        token: str,
        *,
        user_id: str,
        credit_card_id: str | None = None,
        idempotency: Idempotency | None = None,
        now: datetime | None = None,
    ) -> Purchase:
        now = _instant(now)
        for _ in range(ATTEMPTS):
            take: Take | None = None
            committing = False
            deal_id = None
            try:
                with self.db.begin() as session:
                    # The fence from here, before the Redis call, until the commit.
                    values = self._locked(session, account_id, token, fence=True)
                    deal_id = values["deal_id"]
                    if values["fulfillment_state"] == "fulfilled":
                        if values["user_id"] != user_id:
                            raise AlreadyClaimed("the purchase was claimed by another user")
                        purchase = rows.record(values, rows.coupon_codes(session, values["id"]))
                        self._record(session, idempotency, purchase)
                        return purchase
                    take = self.stock.claim(deal_id, account_id, token, values["units"], user_id)
                    if values["price_per_unit"] is None:  # reserved before prices were recorded
                        values["price_per_unit"], values["currency"] = self._deal_price(session, deal_id)
                    fulfilment = self._fulfilment(values, user_id, credit_card_id, now)
                    codes = self._add_lines(session, values, take, changes=fulfilment)
                    values |= fulfilment
                    purchase = rows.record(values, codes)
                    self._record(session, idempotency, purchase)
                    committing = True
                self._emit(
                    ev.Event(ev.PURCHASE_FULFILLED, account_id, purchase.deal_id, purchase=purchase, via="claim"),
                    *self._sold_out_events([take]),
                )
                return purchase
            except NotLoaded:
                self.rebuilder.ensure_loaded(deal_id, now)
            except BaseException:
                if take is not None:
                    # Whether the commit happened or not, SQL is the truth: reload from it.
                    self._best_effort(self.stock.invalidate, take.deal_id)
                    if committing:
                        log.warning("claim commit failed; deal invalidated", extra={"purchase": token})
                raise
        raise Unavailable("the deal's live state kept being rebuilt; retry")

    def release(
        self,
        account_id: int,
        token: str,
        *,
        idempotency: Idempotency | None = None,
        now: datetime | None = None,
    ) -> Purchase:
        now = _instant(now)
        with self.db.begin() as session:
            values = self._locked(session, account_id, token)
            state = values["fulfillment_state"]
            if state == "fulfilled":
                raise AlreadyClaimed("a fulfilled purchase cannot be released")
            # Also when already released: a retry after a crash between our commit and the
            # script then returns the units now rather than when the hold ends.
            had_hold = state in ("reserved", "released")
            changed = state == "reserved"
            if changed:
                if values["reserved_until"] > now:
                    ended = {"fulfillment_state": "released", "ended_at": now}
                else:
                    ended = {"fulfillment_state": "expired", "ended_at": values["reserved_until"]}
                rows.change(session, values["id"], **ended)
                values |= ended
            purchase = rows.record(values)
            self._record(session, idempotency, purchase)
        if had_hold:
            # After the commit: if this fails the hold still ends on time and the sweep
            # returns it, so the release is not lost, only late.
            self._best_effort(self.stock.release, purchase.deal_id, token)
        if changed:
            kind = ev.PURCHASE_RELEASED if purchase.fulfillment_state == "released" else ev.PURCHASE_EXPIRED
            self._emit(ev.Event(kind, account_id, purchase.deal_id, purchase=purchase))
        return purchase

    def extend(
        self,
        account_id: int,
        token: str,
        *,
        seconds: int | None = None,
        idempotency: Idempotency | None = None,
        now: datetime | None = None,
    ) -> Purchase:
        now = _instant(now)
        seconds = self.policy.ttl_seconds if seconds is None else min(seconds, self.policy.ttl_seconds)
        for _ in range(ATTEMPTS):
            deal_id = None
            try:
                with self.db.begin() as session:
                    # The fence from here, before the Redis call, until the commit.
                    values = self._locked(session, account_id, token, fence=True)
                    deal_id = values["deal_id"]
                    state = effective_state(rows.record(values), now)
                    if state != "reserved":
                        raise HoldNotActive(state)
                    limit = values["reserved_at"] + timedelta(seconds=self.policy.max_hold_seconds)
                    wanted = min(values["reserved_until"] + timedelta(seconds=seconds), limit)
                    if wanted <= values["reserved_until"]:
                        raise MaxHoldReached(self.policy.max_hold_seconds)
                    try:
                        ends_ms = self.stock.extend(deal_id, token, to_ms(now), to_ms(wanted))
                    except NotHeld:
                        raise HoldNotActive("expired") from None
                    values["reserved_until"] = from_ms(ends_ms)
                    rows.change(session, values["id"], reserved_until=values["reserved_until"])
                    purchase = rows.record(values)
                    self._record(session, idempotency, purchase)
                return purchase
            except NotLoaded:
                self.rebuilder.ensure_loaded(deal_id, now)
        raise Unavailable("the deal's live state kept being rebuilt; retry")

    # -- reads ----------------------------------------------------------------------------

    def get(self, account_id: int, token: str) -> Purchase:
        with self.db.read() as session:
            purchase = session.scalar(select(Purchase).where(Purchase.token == token))
            if purchase is None or purchase.account_id != account_id or purchase.source != "v1":
                raise PurchaseNotFound()
            return purchase

    def list(
        self,
        account_id: int,
        *,
        deal_id: int | None = None,
        state: str | None = None,
        page: int = 1,
        per_page: int = 50,
        now: datetime | None = None,
    ) -> tuple[Sequence[Purchase], int]:
        """Newest first; `state` filters on the effective state (an ended hold is expired)."""
        now = _instant(now)
        query = select(Purchase).where(Purchase.account_id == account_id, Purchase.source == "v1")
        if deal_id is not None:
            query = query.where(Purchase.deal_id == deal_id)
        if state == "reserved":
            query = query.where(Purchase.fulfillment_state == "reserved", Purchase.reserved_until > now)
        elif state == "expired":
            query = query.where(
                or_(
                    Purchase.fulfillment_state == "expired",
                    (Purchase.fulfillment_state == "reserved") & (Purchase.reserved_until <= now),
                )
            )
        elif state is not None:
            query = query.where(Purchase.fulfillment_state == state)
        with self.db.read() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery()))
            rows = session.scalars(
                query.order_by(Purchase.id.desc()).offset((page - 1) * per_page).limit(per_page)
            ).all()
            return rows, int(total)

    # -- the two-store protocol -----------------------------------------------------------

    def with_loaded(self, deal_id: int, op: Callable[[], T], now: datetime | None = None) -> T:
        """Run a script; if the deal is not in Redis, rebuild it from SQL and run it again."""
        for _ in range(ATTEMPTS):
            try:
                return op()
            except NotLoaded:
                self.rebuilder.ensure_loaded(deal_id, now)
        raise Unavailable("the deal's live state could not be loaded; retry")

    def commit_takes(
        self,
        takes: list[Take],
        write: Callable[[Connection], T],
        *,
        undo: Callable[[], object],
        idempotency: Idempotency | None,
        write_takes_fence: bool = False,
    ) -> T:
        """Commit the SQL side of stock already taken in Redis (see the module docstring).

        The deals' shared fences are taken first, unless `write_takes_fence` says the write's
        own first statement takes its single deal's fence (one round trip fewer); either way the
        generations are checked while the fences are held, before the commit.
        """
        committing = False
        try:
            with self.db.begin() as connection:
                if write_takes_fence:
                    result = write(connection)
                    self._check_generations(takes)
                else:
                    for deal_id in sorted({take.deal_id for take in takes}):
                        self.db.fence(connection, deal_id, exclusive=False)
                    self._check_generations(takes)
                    result = write(connection)
                self._record(connection, idempotency, result)
                committing = True
            self._emit(*self._sold_out_events(takes))
            return result
        except BaseException:
            # Before the commit we know SQL has nothing: undo exactly. At the commit we do not
            # know, and undoing could oversell: let the deal be rebuilt from SQL instead.
            if committing or not self._best_effort(undo):
                for deal_id in {take.deal_id for take in takes}:
                    self._best_effort(self.stock.invalidate, deal_id)
            raise

    def _group_commit(self, values: dict, take: Take, idempotency: Idempotency | None) -> rows.PurchaseRecord:
        """A reservation's row through the group committer, with commit_takes's failure rules."""
        try:
            purchase = self.committer.commit(values, take, idempotency)
        except CommitUncertain as error:
            self._best_effort(self.stock.invalidate, take.deal_id)
            raise Unavailable("the database commit failed and its outcome is unknown; retry") from error
        except BaseException:
            if not self._best_effort(self.stock.release, take.deal_id, values["token"]):
                self._best_effort(self.stock.invalidate, take.deal_id)
            raise
        self._emit(*self._sold_out_events([take]))
        return purchase

    def _check_generations(self, takes: list[Take]) -> None:
        """Under the fence no rebuild can start; if one ran since our script, the take is not
        part of the live state any more and must be made again."""
        for take in takes:
            if self.stock.generation(take.deal_id) != take.gen:
                raise Stale()

    def _locked(self, session: Connection, account_id: int, token: str, *, fence: bool = False) -> dict:
        """The purchase's row, locked. With `fence`, also its deal's shared fence, taken by the
        same statement on PostgreSQL (one round trip fewer for a claim or an extension)."""
        namespace = self.db.fence_namespace if fence else None
        values = rows.lock(session, token, namespace)
        if values is None or values["account_id"] != account_id or values["source"] != "v1":
            raise PurchaseNotFound()
        if fence and namespace is None:
            self.db.fence(session, values["deal_id"], exclusive=False)
        return values

    @staticmethod
    def _fulfilment(values: dict, user_id: str, credit_card_id: str | None, now: datetime) -> dict:
        unit_price = minor_to_decimal(values["price_per_unit"], values["currency"])
        return rows.fulfilment(values, user_id=user_id, credit_card_id=credit_card_id, now=now, unit_price=unit_price)

    def _add_lines(self, session: Connection, values: dict, take: Take, changes: dict | None = None) -> list[str]:
        """The purchase's line in the ledger (its deal's sold count is summed from these), one
        coupon per unit, and `changes` to its row, in one statement on PostgreSQL; returns the
        coupon codes."""
        codes = [new_coupon_code() for _ in range(values["units"])]
        item = {
            "name": take.title,
            "sku": take.label,
            "unit_price": minor_to_decimal(values["price_per_unit"], values["currency"]),
            "quantity": values["units"],
            "deal_id": values["deal_id"],
        }
        rows.add_lines(session, values["id"], item, codes, changes=changes, one_statement=not self.db.is_sqlite)
        return codes

    @staticmethod
    def _deal_price(connection: Connection, deal_id: int) -> tuple[int, str]:
        return tuple(connection.execute(select(Deal.price_per_unit, Deal.currency).where(Deal.id == deal_id)).one())

    @staticmethod
    def _record(session: Connection, idempotency: Idempotency | None, result: object) -> None:
        """Store the response for the Idempotency-Key in the same transaction as the effect."""
        if idempotency is None:
            return
        try:
            idempotency.record(session, result)
        except IntegrityError:
            # A concurrent request with the same key committed first.
            raise IdempotencyReplay() from None

    @staticmethod
    def _sold_out_events(takes: Sequence[Take]) -> list[ev.Event]:
        """A take that left its deal with nothing available sold it out (once per sell-out: only
        the take that moved `available` to 0 sees 0 after it)."""
        return [
            ev.Event(ev.DEAL_SOLD_OUT, take.account_id, take.deal_id) for take in takes if take.available_after == 0
        ]

    def _emit(self, *events: ev.Event) -> None:
        """Tell the event sink, after the commit. Never fails the write that already happened."""
        if not events:
            return
        try:
            self.events.emit(*events)
        except Exception:
            log.exception("event sink failed; events dropped", extra={"events": [e.type for e in events]})

    @staticmethod
    def _best_effort(fn: Callable[..., object], *args: object) -> bool:
        try:
            fn(*args)
            return True
        except Exception:
            log.exception("best-effort step failed; the reconciler will repair it")
            return False
