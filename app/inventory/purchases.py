"""Reserve, claim, release, extend and direct purchases: short flows over the write protocol.

Each flow says what to take in Redis (a Lua script, by purchase token) and what to write in SQL
(writes.py); protocol.py runs them: script → settle what it found → commit → answer, with the
retries, the kept answers of Idempotency-Keys and every compensation in one place.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select

from app.core import events as ev
from app.core.errors import KeyReused
from app.core.idempotency import Keyed
from app.core.money import minor_to_decimal
from app.core.timeutil import from_ms, to_ms
from app.store import purchase_rows as rows
from app.store.batched import Batched
from app.store.db import Database
from app.store.models import Deal, Purchase
from app.store.purchase_rows import Line, PurchaseRecord

from .after_commit import best_effort, emit
from .errors import (
    AlreadyClaimed,
    HoldNotActive,
    MaxHoldReached,
    NotHeld,
    PurchaseNotFound,
    Skipped,
    UserMismatch,
    UserRequired,
)
from .protocol import Protocol
from .stock import Found, LiveStock, Order, Taken
from .writes import Fulfilment, HoldEnd, HoldExtension, Reservation, Sale, Unchanged, Write, ended_event

# Crockford's base32: no I, L, O or U, so a coupon read aloud is not misread.
COUPON_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_token() -> str:
    """A purchase id: 144 random bits, also the reservation token."""
    return secrets.token_urlsafe(18)


def new_coupon_codes(count: int) -> list[str]:
    """`count` codes of 80 random bits each, in four groups of four: unique and unguessable."""
    raw = secrets.token_bytes(10 * count)
    codes = []
    for at in range(0, len(raw), 10):
        number = int.from_bytes(raw[at : at + 10], "big")
        chars = "".join(COUPON_ALPHABET[(number >> (5 * i)) & 31] for i in range(16))
        codes.append("-".join(chars[i : i + 4] for i in range(0, 16, 4)))
    return codes


def effective_state(purchase, now: datetime) -> str:
    """A reservation whose hold has ended is expired, whether or not the sweep has run."""
    return _held_state(purchase.fulfillment_state, purchase.reserved_until, now)


def effective_cart_state(cart, now: datetime) -> str:
    """A reserved cart whose holds have ended is expired, whether or not the sweep has run."""
    return _held_state(cart.state, cart.reserved_until, now)


def _held_state(state: str, reserved_until: datetime | None, now: datetime) -> str:
    if state == "reserved" and reserved_until is not None and reserved_until <= now:
        return "expired"
    return state


@dataclass(frozen=True)
class HoldPolicy:
    ttl_seconds: int = 300
    max_hold_seconds: int = 900

    def extended_until(self, state: str, since: datetime, until: datetime, seconds: int | None) -> datetime:
        """When a hold in `state`, held since `since` until `until`, ends once extended by
        `seconds` (at most ttl_seconds; never past max_hold_seconds after `since`)."""
        if state != "reserved":
            raise HoldNotActive(state)
        seconds = self.ttl_seconds if seconds is None else min(seconds, self.ttl_seconds)
        wanted = min(until + timedelta(seconds=seconds), since + timedelta(seconds=self.max_hold_seconds))
        if wanted <= until:
            raise MaxHoldReached(self.max_hold_seconds)
        return wanted


@dataclass(frozen=True)
class ClaimRequest:
    """What a claim request names: who pays, and with what; for a keyed claim, the name its
    retries share (its key's token) and when it began (`Order.claim_key`, `Order.since_ms`)."""

    user_id: str | None
    credit_card_id: str | None
    key_token: str = ""
    since_ms: int = 0

    def order(self, deal_id: int, account_id: int, token: str, nonce: str, units: int, buyer: str) -> Order:
        """An attempt's order to sell `token`'s units to `buyer`."""
        return Order(deal_id, account_id, token, nonce, units, buyer, self.since_ms, self.key_token)


class HoldKeeper:
    """What a reserved purchase and a cart share: a claim, a release or an extension reads the
    record by token afresh in each attempt of the protocol, then acts on its holds (a purchase
    is one hold, a cart one per item). Release and extend are the same on both; the subclass
    says how its record reads and changes (the hooks at the end)."""

    protocol: Protocol
    stock: LiveStock
    policy: HoldPolicy
    events: ev.Events
    #: Writes down the waitlist offers units given back made (WaitlistService.record).
    record_offers: Callable[[int], int] | None = None
    #: What the record is called in an error.
    noun = "purchase"

    def claim(
        self,
        account_id: int,
        token: str,
        *,
        user_id: str | None = None,
        credit_card_id: str | None = None,
        keyed: Keyed | None = None,
        now: datetime | None = None,
    ):
        """Payment succeeded: every hold becomes a sale, or none does. `user_id` may be left
        out when the holds were reserved for a customer (they are theirs); another customer is
        `user_mismatch`."""

        request = ClaimRequest(user_id, credit_card_id)
        if keyed is not None:
            request = ClaimRequest(user_id, credit_card_id, keyed.token, self.protocol.began(now))

        def claim(seen, at: datetime, nonce: str):
            return self._claim(seen, at, nonce, request, keyed)

        return self._on_record(account_id, token, keyed, now, claim)

    def release(self, account_id: int, token: str, *, keyed: Keyed | None = None, now: datetime | None = None):
        """Payment failed: SQL first, then the holds back to stock (a crash in between: the
        holds still end on time and come back then)."""

        def release(seen, at: datetime, _nonce: str):
            if self._state(seen) == "fulfilled" or any(p.fulfillment_state == "fulfilled" for p in self._holds(seen)):
                raise AlreadyClaimed(f"a fulfilled {self.noun} cannot be released")
            if self._state(seen) != "reserved":
                # Also when already released: a retry after a crash between the commit and the
                # script returns the units now rather than when the hold ends.
                answer = self.protocol.commit(Unchanged(seen), [], keyed) if keyed else seen
            else:
                answer = self.protocol.commit(self._ended(seen, at), [], keyed)
                emit(self.events, *(ended_event(p) for p in self._holds(answer)))
            for purchase in self._holds(answer):
                self._give_back_hold(purchase)
            return answer

        return self._on_record(account_id, token, keyed, now, release)

    def extend(
        self,
        account_id: int,
        token: str,
        *,
        seconds: int | None = None,
        keyed: Keyed | None = None,
        now: datetime | None = None,
    ):
        """Hold `seconds` longer (at most the TTL; never past max_hold_seconds after the
        reserve). Nothing is given back if the commit fails (a longer hold in Redis than in SQL
        only holds longer), but the generation is checked: a rebuild in between would have
        loaded the old end."""

        def extend(seen, at: datetime, _nonce: str):
            since, until = self._held(seen)
            wanted = self.policy.extended_until(_held_state(self._state(seen), until, at), since, until, seconds)
            extensions, holds = [], []
            for p in self._holds(seen):
                try:
                    gen, ends_ms = self.protocol.take(
                        p.deal_id, lambda p=p: self.stock.extend(p.deal_id, p.token, to_ms(at), to_ms(wanted))
                    )
                except NotHeld:
                    raise HoldNotActive("expired") from None
                extensions.append(Taken(p.deal_id, account_id, p.token, "", gen, 0))
                holds.append(replace(p, reserved_until=from_ms(ends_ms)))
            return self.protocol.commit(self._extended(seen, holds), extensions, keyed)

        return self._on_record(account_id, token, keyed, now, extend)

    def _on_record(self, account_id: int, token: str, keyed: Keyed | None, now: datetime | None, step):
        """Run `step(record, at, nonce)` in each attempt, on the record as read in that attempt."""

        def attempt(nonce: str):
            at = self.protocol.now(now)
            return step(self._read(account_id, token), at, nonce)

        return self.protocol.run(keyed, attempt)

    def _give_back_hold(self, purchase: PurchaseRecord) -> None:
        """After the commit: if this fails the hold still ends on time and the sweep returns it,
        so the release is not lost, only late. The units go to waiting customers first: their
        offers are written down now (else by the sweep)."""
        if best_effort(self.stock.release, purchase.deal_id, purchase.token, to_ms(self.protocol.clock())):
            if self.record_offers is not None:
                best_effort(self.record_offers, purchase.deal_id)

    # -- what the subclass says about its record ------------------------------------------

    def _read(self, account_id: int, token: str):
        raise NotImplementedError

    def _claim(self, seen, at: datetime, nonce: str, request: ClaimRequest, keyed: Keyed | None):
        raise NotImplementedError

    def _holds(self, record) -> list[PurchaseRecord]:
        """The record's holds, one purchase each."""
        raise NotImplementedError

    def _state(self, record) -> str:
        raise NotImplementedError

    def _held(self, record) -> tuple[datetime, datetime]:
        """Since when and until when the record holds."""
        raise NotImplementedError

    def _ended(self, seen, at: datetime) -> Write:
        """The write that gives up the record's holds `at`."""
        raise NotImplementedError

    def _extended(self, seen, holds: list[PurchaseRecord]) -> Write:
        """The write that records the holds' new ends."""
        raise NotImplementedError


class PurchaseService(HoldKeeper):
    def __init__(
        self,
        db: Database,
        stock: LiveStock,
        protocol: Protocol,
        policy: HoldPolicy = HoldPolicy(),
        events: ev.Events = ev.NULL_EVENTS,
    ) -> None:
        self.db = db
        self.stock = stock
        self.protocol = protocol
        self.policy = policy
        self.events = events
        # Claims, releases and extensions read their purchase first: together, on one connection.
        self._kept_reads = db.kept_reads()
        self._reads: Batched[str, PurchaseRecord] = Batched(self._read_many, "purchase-reads")

    # -- writes ---------------------------------------------------------------------------

    def known_refusal(self, account_id: int, deal_id: int, units: int, *, keyed: Keyed | None = None) -> None:
        """Raise what `reserve` would raise for this request when it is known without taking:
        SoldOut while the sold-out memo knows the deal sold out and the key's first attempt (if
        any) holds nothing of it (LiveStock.refuse_from_memory); for a key whose earlier request
        succeeded, its kept answer (`Replay`), or `KeyReused`. Returns when only the reserve
        itself can tell; the edge asks before it builds the whole request
        (app/web/sold_out_gate.py)."""
        token = None if keyed is None else keyed.token
        now_ms = to_ms(self.protocol.now())
        self.protocol.kept.exactly_once(
            keyed, lambda: self.stock.refuse_from_memory(deal_id, account_id, units, token, now_ms)
        )

    def reserve(
        self,
        account_id: int,
        deal_id: int,
        units: int,
        *,
        user_id: str | None = None,
        keyed: Keyed | None = None,
        now: datetime | None = None,
    ) -> PurchaseRecord:
        """Hold units; for customer `user_id` when given: their holds and purchases then count
        against the deal's max_per_user, and only they can claim it."""
        token = _Token(keyed, self.protocol.began(now))

        def attempt(nonce: str) -> PurchaseRecord:
            at = self.protocol.now(now)
            ends_ms = to_ms(at) + self.policy.ttl_seconds * 1000
            order = Order(deal_id, account_id, token.value, nonce, units, user_id or "", token.since_ms)
            taken = self._take_new(self.stock.reserve, order, keyed, to_ms(at), ends_ms)
            record = new_record(taken, at, user_id=user_id, reserved_at=at, reserved_until=from_ms(taken.ends_ms))
            purchase = self.protocol.commit(Reservation(record), [taken], keyed)
            if taken.needs_index:
                best_effort(self.stock.index, deal_id, taken.ends_ms)
            emit(
                self.events, ev.Event(ev.PURCHASE_RESERVED, account_id, deal_id, purchase=purchase), *_sold_out([taken])
            )
            return purchase

        return self.protocol.run(keyed, attempt, on_skipped=token.renew)

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
        keyed: Keyed | None = None,
        now: datetime | None = None,
    ) -> PurchaseRecord:
        """A direct purchase: stock taken and the purchase fulfilled in one step."""
        token = _Token(keyed, self.protocol.began(now))

        def attempt(nonce: str) -> PurchaseRecord:
            at = self.protocol.now(now)
            order = Order(deal_id, account_id, token.value, nonce, units, user_id, token.since_ms)
            taken = self._take_new(self.stock.buy, order, keyed, to_ms(at), expected_price_per_unit)
            record = new_record(taken, at, session_id=session_id)
            _fulfil(record, user_id, credit_card_id, at)
            codes = new_coupon_codes(units)
            record.coupons = codes
            purchase = self.protocol.commit(Sale(record, _line(record, taken), codes), [taken], keyed)
            emit(
                self.events,
                ev.Event(ev.PURCHASE_FULFILLED, account_id, deal_id, purchase=purchase, via="create"),
                *_sold_out([taken]),
            )
            return purchase

        return self.protocol.run(keyed, attempt, on_skipped=token.renew)

    def _claim(
        self, seen: PurchaseRecord, at: datetime, nonce: str, request: ClaimRequest, keyed: Keyed | None
    ) -> PurchaseRecord:
        account_id, deal_id, token = seen.account_id, seen.deal_id, seen.token
        if seen.fulfillment_state == "fulfilled":
            if (request.user_id or seen.user_id) != seen.user_id:
                raise AlreadyClaimed("the purchase was claimed by another user")
            return self.protocol.commit(Unchanged(seen), [], keyed) if keyed else seen
        buyer = claimant(seen.user_id, request.user_id)
        order = request.order(deal_id, account_id, token, nonce, seen.units, buyer)
        got = self.protocol.take(deal_id, lambda: self.stock.claim(order, to_ms(at)))
        taken = self.protocol.settle(got, nonce=nonce, account_id=account_id, user_id=buyer, creates=False)
        record = replace(seen, units=taken.units)
        if record.price_per_unit is None:  # reserved before prices were recorded
            record.price_per_unit, record.currency = self._deal_price(deal_id)
        _fulfil(record, buyer, request.credit_card_id, at)
        codes = new_coupon_codes(record.units)
        record.coupons = codes
        write = Fulfilment(record, seen.fulfillment_state, seen.reserved_until, _line(record, taken), codes)
        purchase = self.protocol.commit(write, [taken], keyed)
        emit(
            self.events,
            ev.Event(ev.PURCHASE_FULFILLED, account_id, deal_id, purchase=purchase, via="claim"),
            *_sold_out([taken]),
        )
        return purchase

    def _holds(self, record: PurchaseRecord) -> list[PurchaseRecord]:
        return [record]

    def _state(self, record: PurchaseRecord) -> str:
        return record.fulfillment_state

    def _held(self, record: PurchaseRecord) -> tuple[datetime, datetime]:
        return record.reserved_at, record.reserved_until

    def _ended(self, seen: PurchaseRecord, at: datetime) -> Write:
        return HoldEnd(ended_hold(seen, at), seen.reserved_until)

    def _extended(self, seen: PurchaseRecord, holds: list[PurchaseRecord]) -> Write:
        return HoldExtension(holds[0], seen.reserved_until)

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
        now = self.protocol.now(now)
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
            found = session.scalars(
                query.order_by(Purchase.id.desc()).offset((page - 1) * per_page).limit(per_page)
            ).all()
            return found, int(total)

    # -- helpers --------------------------------------------------------------------------

    def _take_new(self, take: Callable[..., Taken | Found], order: Order, keyed: Keyed | None, *args: Any) -> Taken:
        """The take of a purchase this request creates (a reserve or a direct purchase:
        `take(order, *args)`): the script's, or the one its token already had, which must then
        be for the same units."""
        got = self.protocol.take(order.deal_id, lambda: take(order, *args))
        taken = self.protocol.settle(got, nonce=order.nonce, account_id=order.account_id, keyed=keyed)
        _same_units(taken, order.units)
        return taken

    def _read(self, account_id: int, token: str) -> PurchaseRecord:
        record = self._reads.get(token)
        if record is None or record.account_id != account_id or record.source != "v1":
            raise PurchaseNotFound()
        return replace(record, coupons=list(record.coupons))

    def _read_many(self, tokens: list[str]) -> dict[str, PurchaseRecord]:
        with self._kept_reads.reading() as connection:
            return rows.read_many(connection, tokens)

    def _deal_price(self, deal_id: int) -> tuple[int, str]:
        with self.db.read() as session:
            return tuple(session.execute(select(Deal.price_per_unit, Deal.currency).where(Deal.id == deal_id)).one())


class _Token:
    """The token of the purchase a reserve or direct purchase creates: derived from its
    Idempotency-Key, or random. If the key's earlier purchase holds the token and the key's
    answer is no longer kept (past the retention period), the request is a new one: a new token.
    `since_ms`: when the request began, for a token other requests share (`Order.since_ms`)."""

    def __init__(self, keyed: Keyed | None, began_ms: int) -> None:
        self.value = keyed.token if keyed is not None else new_token()
        self.since_ms = began_ms if keyed is not None else 0

    def renew(self, skipped: Skipped) -> None:
        if skipped.why == "taken":
            self.value = new_token()
            self.since_ms = 0


def claimant(reserved_for: str | None, user_id: str | None) -> str:
    """Who claims a purchase or a cart: the customer it was reserved for (another:
    user_mismatch), or the one named now."""
    if reserved_for:
        if user_id and user_id != reserved_for:
            raise UserMismatch()
        return reserved_for
    if not user_id:
        raise UserRequired()
    return user_id


def ended_hold(purchase: PurchaseRecord, at: datetime) -> PurchaseRecord:
    """A reserved purchase whose hold is given up `at`: released, or expired (when it ended)
    if it ended before then. A purchase in another state is left as it is."""
    if purchase.fulfillment_state != "reserved":
        return purchase
    if purchase.reserved_until > at:
        return replace(purchase, fulfillment_state="released", ended_at=at)
    return replace(purchase, fulfillment_state="expired", ended_at=purchase.reserved_until)


def _same_units(taken: Taken, units: int) -> None:
    """A take found under the key's token must be this request's: the same key with another
    quantity is another request."""
    if taken.units != units:
        raise KeyReused()


def new_record(taken: Taken, at: datetime, **fields) -> PurchaseRecord:
    """The record of the purchase `taken` creates (a reserve, a direct purchase, a cart's item),
    made `at`: its token, deal and units as taken, priced as the script saw the deal."""
    return PurchaseRecord(
        token=taken.token,
        account_id=taken.account_id,
        deal_id=taken.deal_id,
        units=taken.units,
        price_per_unit=taken.price,
        currency=taken.currency,
        created_at=at,
        **fields,
    )


def _fulfil(record: PurchaseRecord, user_id: str, credit_card_id: str | None, now: datetime) -> None:
    unit_price = minor_to_decimal(record.price_per_unit, record.currency)
    for name, value in rows.fulfilment(
        record, user_id=user_id, credit_card_id=credit_card_id, now=now, unit_price=unit_price
    ).items():
        setattr(record, name, value)


def _line(record: PurchaseRecord, taken: Taken) -> Line:
    """The purchase's line in the ledger (its deal's sold count is summed from these)."""
    return Line(
        name=taken.title,
        sku=taken.label or str(record.deal_id),
        unit_price=minor_to_decimal(record.price_per_unit, record.currency),
        quantity=record.units,
        deal_id=record.deal_id,
    )


def _sold_out(takes: Sequence[Taken]) -> list[ev.Event]:
    """A take that left its deal with nothing available sold it out (once per sell-out: only
    the take that moved `available` to 0 sees 0 after it)."""
    return [ev.Event(ev.DEAL_SOLD_OUT, take.account_id, take.deal_id) for take in takes if take.available_after == 0]
