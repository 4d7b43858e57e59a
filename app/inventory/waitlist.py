"""The waitlist: customers waiting for a sold-out deal get the units that come back, in order.

Redis keeps the queue with the deal's live state (lua/lib.lua: `waiting`, `offers`, `offered`).
Every script that gives units back to stock (a release, an ended hold returned by a reserve or
the sweep, a give-back, a rebuild after a bigger quantity) first gives them to the waiting
customers, one unit each, as holds of their own (offers), in the same atomic step: a buyer
reserving at that moment never jumps the queue. An offer that ends unclaimed returns its unit
the same way, to the next customer.

SQL learns of the offers afterwards (`record`): the script notes each offer in `offered`; the
release that made it, or else the worker's sweep, writes the offer's purchase (a reservation
with `waitlist_entry_id`, held WAITLIST_OFFER_SECONDS) and the entry's new state through the
write protocol's committer, under the deal's fence and generation check (an offer a rebuild
wiped is not recorded: the rebuild loaded the entry as waiting and offered again). Until then
the offer holds its unit in Redis alone: an undersell for a moment, never an oversell.

An entry is `waiting`, then `offered` (its purchase held for the customer), then `fulfilled`
when the customer claims it, or `lapsed` when the offer ends unclaimed; `left` when the
customer leaves the queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from app.core import events as ev
from app.core.errors import RequestInProgress, Unavailable
from app.core.idempotency import KeptAnswers, Keyed
from app.core.timeutil import from_ms, to_ms
from app.store import purchase_rows as rows
from app.store.db import Database
from app.store.models import Deal, Purchase, WaitlistEntry
from app.store.purchase_rows import PurchaseRecord

from . import keys as K
from .after_commit import emit
from .errors import DealNotFound, NotLoaded, OfferUnrecorded, PurchaseNotFound, Skipped, Stale
from .protocol import Protocol
from .stock import REDIS_DOWN, LiveStock, Offer, Taken
from .writes import Write

ENTRIES = WaitlistEntry.__table__
#: Most entries a list shows.
MAX_LISTED = 500
#: A join writes down the deal's offers and tries again when its entry's last offer was not
#: written down yet; another such offer in between is as unlikely as it sounds.
JOIN_ATTEMPTS = 3
ENTRY_STATES = ("waiting", "offered", "fulfilled", "lapsed", "left")


class EntryNotFound(PurchaseNotFound):
    pass


class QueueLength(NamedTuple):
    """A deal's waitlist now: customers waiting, and offers holding a unit for a customer."""

    waiting: int
    offered: int


@dataclass
class Entry:
    """A waitlist entry as the API shows it."""

    id: int
    deal_id: int
    account_id: int
    user_id: str
    state: str
    position: int | None
    purchase_id: str | None
    created_at: datetime
    offered_at: datetime | None
    offered_until: datetime | None = None
    #: A join's answer: True when it made the entry, False when the customer was waiting already.
    created: bool = False


@dataclass
class WaitlistOffers(Write):
    """Offers made in Redis, written down: each waiting entry becomes offered with its purchase
    (a reservation for its customer). An entry no longer waiting (its customer left) gets no
    purchase: its offer is handed back after the commit."""

    deal_id: int
    account_id: int
    offers: list[Offer]
    now: datetime
    recorded: list[Offer] = field(default_factory=list)
    refused: list[Offer] = field(default_factory=list)
    #: The purchases this write made (not those a recorder that died had made already).
    made: list[PurchaseRecord] = field(default_factory=list)

    @property
    def answer(self) -> WaitlistOffers:
        return self

    @property
    def row(self) -> tuple[str, int]:
        return "waiting entries", self.deal_id

    def apply(self, connection: Connection) -> bool:
        self.recorded, self.refused, self.made = [], [], []
        for offer in self.offers:
            changed = connection.execute(
                update(ENTRIES)
                .where(ENTRIES.c.id == offer.entry_id, ENTRIES.c.state == "waiting")
                .values(state="offered", purchase_token=offer.token, offered_at=self.now)
                .returning(ENTRIES.c.id)
            ).first()
            if changed is None:
                again = connection.execute(
                    select(ENTRIES.c.purchase_token).where(ENTRIES.c.id == offer.entry_id)
                ).scalar_one_or_none()
                # Recorded already (a recorder that died before forgetting the offers), or gone.
                (self.recorded if again == offer.token else self.refused).append(offer)
                continue
            purchase = self._purchase(offer)
            rows.insert_reservations(connection, [purchase])
            self.recorded.append(offer)
            self.made.append(purchase)
        return True

    def events(self) -> Sequence[ev.Event]:
        return [
            ev.Event(
                ev.WAITLIST_OFFERED,
                self.account_id,
                self.deal_id,
                purchase=purchase,
                details={"waitlist_entry": {"id": purchase.waitlist_entry_id, "user_id": purchase.user_id}},
            )
            for purchase in self.made
        ]

    def _purchase(self, offer: Offer) -> PurchaseRecord:
        return PurchaseRecord(
            token=offer.token,
            account_id=self.account_id,
            deal_id=self.deal_id,
            units=1,
            price_per_unit=offer.price,
            currency=offer.currency,
            user_id=offer.user_id,
            reserved_at=self.now,
            reserved_until=from_ms(offer.ends_ms),
            created_at=self.now,
            waitlist_entry_id=offer.entry_id,
        )


@dataclass
class WaitlistLeave(Write):
    """A customer leaves: the entry becomes `left`; the hold of an offer they had ends
    (released). Only from the state the entry was read in."""

    entry: Entry
    offer: PurchaseRecord | None
    now: datetime
    ended: PurchaseRecord | None = None

    @property
    def answer(self) -> Entry:
        return replace(self.entry, state="left", position=None)

    @property
    def row(self) -> tuple[str, int]:
        return "entry", self.entry.id

    def apply(self, connection: Connection) -> bool:
        seen = "offered" if self.offer is not None else "waiting"
        changed = connection.execute(
            update(ENTRIES)
            .where(ENTRIES.c.id == self.entry.id, ENTRIES.c.state == seen)
            .values(state="left", ended_at=self.now)
        ).rowcount
        if not changed:
            return False
        if self.offer is not None and self.offer.fulfillment_state == "reserved":
            ended = replace(self.offer, fulfillment_state="released", ended_at=self.now)
            if rows.end_hold(connection, ended.token, self.offer.reserved_until, "released", self.now):
                self.ended = ended
        return True

    def events(self) -> Sequence[ev.Event]:
        if self.ended is None:
            return ()
        return [ev.Event(ev.PURCHASE_RELEASED, self.ended.account_id, self.ended.deal_id, purchase=self.ended)]


@dataclass(eq=False)
class WaitlistService:
    db: Database
    stock: LiveStock
    protocol: Protocol
    kept: KeptAnswers
    events: ev.Events = ev.NULL_EVENTS

    # -- writes ---------------------------------------------------------------------------

    def join(
        self,
        account_id: int,
        deal_id: int,
        user_id: str,
        *,
        keyed: Keyed | None = None,
        now: datetime | None = None,
        public: bool = False,
    ) -> Entry:
        """The customer's waiting entry: made (`created`), or the one they have. Units available
        now are offered at once, in queue order. Exactly once by the entry itself (one waiting
        entry per customer and deal); a keyed join also keeps its answer for its retries.
        `public`: only while the deal is public (a storefront's join), else DealNotFound."""
        self.kept.replay_if_kept(keyed)
        for _ in range(JOIN_ATTEMPTS):
            at = self.protocol.now(now)
            entry_id, created = self._entry(account_id, deal_id, user_id, at, public=public)
            try:
                offers = self.protocol.take(deal_id, self._waits(deal_id, entry_id, user_id, to_ms(at)))
                break
            except OfferUnrecorded:
                # Its last offer ended before SQL wrote it down: once written, that entry is
                # offered (then lapsed), and the customer joins with a new one.
                self.record(deal_id)
        else:
            raise Unavailable("the waitlist's offers could not be written down; retry")
        # Offers are holds: the sweep index must visit the deal when they end, to hand an
        # unclaimed one on (the deal may have had no hold, so no place in the index). Whatever
        # this run's count says: a script sent again after it ran (or a retried join) answers 0
        # for the offers the first run made. One ZADD that only ever lowers the deal's score.
        self.stock.index(deal_id, to_ms(at) + self.stock.offer_ms)
        if offers:
            self.record(deal_id)
        entry = self.get(account_id, entry_id)
        entry.created = created
        return self._keep(keyed, entry)

    def _waits(self, deal_id: int, entry_id: int, user_id: str, now_ms: int) -> Callable[[], int]:
        return lambda: self.stock.wait(deal_id, entry_id, user_id, now_ms)

    def join_public(
        self, deal_id: int, user_id: str, *, admit: Callable[[int], None] | None = None, now: datetime | None = None
    ) -> Entry:
        """A storefront's join, without the account's secret: only for a public deal (any other,
        like an unknown id, is DealNotFound). `admit(account_id)` is asked first, with the
        deal's account, and may refuse by raising (the edge's write limit on storefronts)."""
        with self.db.reading() as connection:
            found = connection.execute(select(Deal.account_id, Deal.public).where(Deal.id == deal_id)).first()
        if found is None or not found.public:
            raise DealNotFound()
        if admit is not None:
            admit(found.account_id)
        return self.join(found.account_id, deal_id, user_id, now=now, public=True)

    def leave(
        self, account_id: int, entry_id: int, *, keyed: Keyed | None = None, now: datetime | None = None
    ) -> Entry:
        """The customer leaves the queue; an offer they hold is released, its unit handed on to
        the next customer."""
        self.kept.replay_if_kept(keyed)
        for _ in range(3):  # the entry moved on (an offer was made) between the read and the write
            at = self.protocol.now(now)
            entry = self.get(account_id, entry_id)
            if entry.state not in ("waiting", "offered"):
                return self._keep(keyed, entry)
            offer = None
            if entry.state == "offered":
                with self.db.reading() as connection:
                    offer = rows.read(connection, entry.purchase_id)
            try:
                left = self.protocol.commit(WaitlistLeave(entry, offer, at), [], keyed)
            except Skipped:
                continue
            # After the commit, as a release: the unit to the next customer (a crash before this
            # only delays it to the hold's end, when the sweep returns it).
            if offer is not None:
                self.stock.release(entry.deal_id, offer.token, to_ms(at))
                self.record(entry.deal_id)
            else:
                self.stock.unwait(entry.deal_id, entry_id, entry.user_id)
            return left
        raise RequestInProgress()

    def record(self, deal_id: int, now: datetime | None = None) -> int:
        """Write down the offers Redis made on this deal that SQL does not know yet (see the
        module docstring); returns how many were recorded."""
        recorded = 0
        for _ in range(3):  # handing an offer on may make another
            try:
                gen, offers = self.stock.offered(deal_id)
            except NotLoaded:
                return recorded
            if not offers:
                return recorded
            at = self.protocol.now(now)
            account_id = self._account_of(deal_id)
            write = WaitlistOffers(deal_id, account_id, offers, at)
            try:
                self.protocol.commit(write, [Taken(deal_id, account_id, "", "", gen, 0)])
            except (Stale, Skipped):
                return recorded  # a rebuild wiped these offers; it offered the queue again
            self.stock.trim_offered(deal_id, offers)
            recorded += len(write.recorded)
            emit(self.events, *write.events())
            for offer in write.refused:
                self.stock.release(deal_id, offer.token, to_ms(at))
            if not write.refused:
                return recorded
        return recorded

    def record_all(self) -> int:
        """`record` for every loaded deal with offers SQL does not know yet (the worker's sweep)."""
        return sum(self.record(deal_id) for deal_id in self.stock.deals_with_offers())

    # -- reads ----------------------------------------------------------------------------

    def get(self, account_id: int, entry_id: int) -> Entry:
        with self.db.read() as session:
            found = self._entries(session, WaitlistEntry.id == entry_id, ranked=False)
        if not found or found[0].account_id != account_id:
            raise EntryNotFound()
        return found[0]

    def list(self, account_id: int, deal_id: int) -> list[Entry]:
        """The deal's entries, first first (at most MAX_LISTED)."""
        with self.db.read() as session:
            deal = session.get(Deal, deal_id)
            if deal is None or deal.account_id != account_id:
                raise DealNotFound()
            return self._entries(session, WaitlistEntry.deal_id == deal_id, ranked=True)

    def lengths(self, deal_ids: Iterable[int]) -> dict[int, QueueLength]:
        """How many customers wait and how many offers hold a unit, per deal, from the live
        state (the `waiting` list and the `offers` hash, lua/lib.lua) in one pipelined round
        trip: O(1) per deal, nothing counted in SQL. A deal not loaded counts 0 (its queue is
        in SQL until a read loads it). For the dashboard and /metrics."""
        deal_ids = list(deal_ids)
        if not deal_ids:
            return {}
        try:
            pipe = self.stock.client.pipeline(transaction=False)
            for deal_id in deal_ids:
                keys = K.deal_keys(deal_id)
                pipe.llen(keys.waiting)
                pipe.hlen(keys.offers)
            replies = pipe.execute()
        except REDIS_DOWN as error:
            raise Unavailable(f"redis: {error}") from error
        return {
            deal_id: QueueLength(int(replies[2 * at]), int(replies[2 * at + 1])) for at, deal_id in enumerate(deal_ids)
        }

    # -- helpers --------------------------------------------------------------------------

    def _keep(self, keyed: Keyed | None, entry: Entry) -> Entry:
        """Keep a keyed answer; when a retry running alongside kept its own first, that one is
        the answer."""
        if keyed is not None:
            with self.db.begin() as connection:
                held = self.kept.keep(connection, [(keyed, entry)])
            if held:
                self.kept.replay_if_kept(keyed)
        return entry

    def _entry(
        self, account_id: int, deal_id: int, user_id: str, at: datetime, *, public: bool = False
    ) -> tuple[int, bool]:
        with self.db.begin() as connection:
            deal = connection.execute(select(Deal.account_id, Deal.public).where(Deal.id == deal_id)).first()
            if deal is None or deal.account_id != account_id or (public and not deal.public):
                raise DealNotFound()
            existing = self._waiting_entry(connection, deal_id, user_id)
            if existing is not None:
                return existing, False
            dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
            try:
                entry_id = connection.scalar(
                    dialect.insert(ENTRIES)
                    .values(account_id=account_id, deal_id=deal_id, user_id=user_id, state="waiting", created_at=at)
                    .returning(ENTRIES.c.id)
                )
                return entry_id, True
            except IntegrityError:
                pass  # the same customer joined at the same moment: theirs is the one
        with self.db.reading() as connection:
            return self._waiting_entry(connection, deal_id, user_id), False

    @staticmethod
    def _waiting_entry(connection: Connection, deal_id: int, user_id: str) -> int | None:
        return connection.execute(
            select(ENTRIES.c.id).where(
                ENTRIES.c.deal_id == deal_id, ENTRIES.c.user_id == user_id, ENTRIES.c.state == "waiting"
            )
        ).scalar_one_or_none()

    def _account_of(self, deal_id: int) -> int:
        with self.db.reading() as connection:
            return connection.execute(select(Deal.account_id).where(Deal.id == deal_id)).scalar_one()

    def _entries(self, session, condition, *, ranked: bool) -> list[Entry]:
        """Entries with their effective state; `ranked`: the list holds every waiting entry of
        the deal, in order, so positions are counted along it."""
        now = self.protocol.now()
        found = session.execute(
            select(WaitlistEntry, Purchase.fulfillment_state, Purchase.reserved_until)
            .outerjoin(Purchase, Purchase.token == WaitlistEntry.purchase_token)
            .where(condition)
            .order_by(WaitlistEntry.id)
            .limit(MAX_LISTED)
        ).all()
        entries = []
        waiting_seen = 0
        for entry, purchase_state, until in found:
            state = entry.state
            if state == "offered" and purchase_state == "fulfilled":
                state = "fulfilled"
            elif state == "offered" and (purchase_state in ("released", "expired") or (until and until <= now)):
                state = "lapsed"
            position = None
            if state == "waiting":
                waiting_seen += 1
                position = waiting_seen if ranked else self._position(session, entry)
            entries.append(
                Entry(
                    entry.id,
                    entry.deal_id,
                    entry.account_id,
                    entry.user_id,
                    state,
                    position,
                    entry.purchase_token,
                    entry.created_at,
                    entry.offered_at,
                    until if entry.purchase_token else None,
                )
            )
        return entries

    @staticmethod
    def _position(session, entry: WaitlistEntry) -> int:
        return session.scalar(
            select(func.count()).where(
                WaitlistEntry.deal_id == entry.deal_id, WaitlistEntry.state == "waiting", WaitlistEntry.id <= entry.id
            )
        )
