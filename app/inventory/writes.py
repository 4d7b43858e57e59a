"""The SQL half of each write: what the committer writes for it, and what its answer is.

A write knows its answer before it is applied (so the committer can keep a keyed write's answer
in the same transaction as its effect), and applies conditionally: `apply` returns False when
what it would change was changed first (its token taken, its row moved on). The committer then
leaves it out of the commit and gives its takes back; the flow reads again and decides afresh.

Writes of one kind may be applied together (`apply_all`): one statement for a batch of
reservations, each row at most once (`Write.row`).

A write also says what its change means to the outside: `events()`, the events the committer
writes to the outbox in the same transaction, if and only if the write applied (see
`Write.events`). A new write that changes something a receiver would want to know about
overrides it; nothing else is needed for the event to be stored, numbered, listed by
`GET /v1/events` and delivered to the webhooks that subscribe to its type.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection

from app.core import events as ev
from app.store import cart_rows
from app.store import purchase_rows as rows
from app.store.cart_rows import CartRecord
from app.store.purchase_rows import Line, PurchaseRecord


class Write:
    """Base of the writes; `answer` is what the write's request is answered with."""

    record: PurchaseRecord

    @property
    def answer(self) -> PurchaseRecord:
        return self.record

    @property
    def row(self) -> Hashable:
        """The row this write changes. Two writes of one row in a batch (two claims of one
        purchase racing) are never applied in one `apply_all`: the second is applied after
        the first, and sees its effect, as it would one write at a time."""
        return self.record.token

    def apply(self, connection: Connection) -> bool:
        raise NotImplementedError

    @classmethod
    def apply_all(cls, connection: Connection, writes: Sequence[Write], fence: tuple[int, int] | None) -> list[bool]:
        """Apply writes of this kind in one go; `fence` only for kinds that take their deal's
        fence in their own statement (see `takes_fence`)."""
        return [write.apply(connection) for write in writes]

    #: Whether `apply_all` can take a deal's shared fence in its own statement (PostgreSQL).
    takes_fence = False

    def events(self) -> Sequence[ev.Event]:
        """The events of this write's change, as committed: the committer calls it only for a
        write that applied, after `apply`, and inserts the events in the same transaction (the
        transactional outbox, app/inventory/outbox.py). Nothing to do for a `deal.sold_out`: the
        committer adds one for each take of the write that left its deal with nothing available.

        To add an event (say `waitlist.offered` for a write that offers a hold to a waiting
        customer): name its type in app/core/events.py (in WEBHOOK_EVENTS if webhooks may
        subscribe to it), and return it here from what the write already holds, e.g.
        `[ev.Event("waitlist.offered", r.account_id, r.deal_id, purchase=r, details={...})]`.
        Its `data` is the purchase (or cart) as the v1 API shows it, plus `details`
        (app/inventory/outbox.py `data`). Keep it cheap: it runs in the committer's batch."""
        return ()


@dataclass
class Reservation(Write):
    record: PurchaseRecord

    takes_fence = True

    def apply(self, connection: Connection) -> bool:
        return self.apply_all(connection, [self], None)[0]

    @classmethod
    def apply_all(cls, connection, writes, fence) -> list[bool]:
        inserted = rows.insert_reservations(connection, [write.record for write in writes], fence)
        return [write.record.token in inserted for write in writes]

    def events(self) -> Sequence[ev.Event]:
        return [_purchase_event(ev.PURCHASE_RESERVED, self.record)]


@dataclass
class Sale(Write):
    """A direct purchase: a fulfilled row, its line and its coupons."""

    record: PurchaseRecord
    line: Line
    codes: list[str] = field(default_factory=list)

    def apply(self, connection: Connection) -> bool:
        purchase_id = rows.insert_one(connection, self.record, rows.SALE_COLUMNS)
        if purchase_id is None:
            return False
        self.record.id = purchase_id
        rows.insert_lines(connection, purchase_id, [self.line], self.codes)
        return True

    def events(self) -> Sequence[ev.Event]:
        return [_purchase_event(ev.PURCHASE_FULFILLED, self.record, via="create")]


@dataclass
class Fulfilment(Write):
    """A claim: the reservation's row becomes fulfilled, with its line and coupons."""

    record: PurchaseRecord
    seen_state: str
    seen_until: datetime | None
    line: Line
    codes: list[str] = field(default_factory=list)

    takes_fence = True

    def apply(self, connection: Connection) -> bool:
        return self.apply_all(connection, [self], None)[0]

    @classmethod
    def apply_all(cls, connection, writes, fence) -> list[bool]:
        if connection.dialect.name != "postgresql":
            return [rows.fulfil(connection, w.record, w.seen_state, w.seen_until, w.line, w.codes) for w in writes]
        done = rows.fulfil_all(connection, [(w.record, w.seen_state, w.seen_until, w.line) for w in writes], fence)
        return [write.record.token in done for write in writes]

    def events(self) -> Sequence[ev.Event]:
        return [_purchase_event(ev.PURCHASE_FULFILLED, self.record, via="claim")]


@dataclass
class HoldEnd(Write):
    """A release: the reservation's row becomes released (or expired, when its hold had ended)."""

    record: PurchaseRecord
    seen_until: datetime | None

    def apply(self, connection: Connection) -> bool:
        return rows.end_hold(
            connection, self.record.token, self.seen_until, self.record.fulfillment_state, self.record.ended_at
        )

    def events(self) -> Sequence[ev.Event]:
        return [ended_event(self.record)]


@dataclass
class HoldExtension(Write):
    record: PurchaseRecord
    seen_until: datetime

    def apply(self, connection: Connection) -> bool:
        return rows.extend_hold(connection, self.record.token, self.seen_until, self.record.reserved_until)


@dataclass
class LedgerEntry(Write):
    """A v3 purchase: its row (unless its transaction_id is recorded) and its product lines."""

    record: PurchaseRecord
    lines: list[Line]

    def apply(self, connection: Connection) -> bool:
        purchase_id = rows.insert_one(connection, self.record, rows.LEDGER_COLUMNS)
        if purchase_id is None:
            return False
        self.record.id = purchase_id
        rows.insert_lines(connection, purchase_id, self.lines)
        return True


@dataclass
class Unchanged(Write):
    """A write that found its effect already there (a claim of a purchase fulfilled for the same
    user): nothing to write but its keyed answer."""

    record: PurchaseRecord

    def apply(self, connection: Connection) -> bool:
        return True


class _CartAnswer(Write):
    """A write answered with its cart; its kind applies a batch's carts together."""

    cart: CartRecord

    @property
    def answer(self) -> CartRecord:
        return self.cart

    @property
    def row(self) -> str:
        return self.cart.token

    def apply(self, connection: Connection) -> bool:
        return self.apply_all(connection, [self], None)[0]


@dataclass
class _CartWrite(_CartAnswer):
    """A write of a cart and its items: the cart's row becomes `cart` (its state and hold end)
    only from the state its flow read (`seen`), and its items all change or none (their rows
    locked and checked first)."""

    cart: CartRecord
    seen: CartRecord

    @classmethod
    def apply_all(cls, connection, writes, fence) -> list[bool]:
        as_read = cart_rows.items_as_read(connection, [write.seen.purchases for write in writes])
        fresh = [write for write, ok in zip(writes, as_read, strict=True) if ok]
        changed = cart_rows.change_many(connection, [write.change() for write in fresh]) if fresh else set()
        done = [write for write in fresh if write.cart.token in changed]
        if done:
            cls._apply_items(connection, done)
        return [write.cart.token in changed for write in writes]

    def change(self) -> cart_rows.CartChange:
        seen, cart = self.seen, self.cart
        return cart_rows.CartChange(seen.token, seen.state, seen.attempt, cart.state, cart.reserved_until)

    @classmethod
    def _apply_items(cls, connection: Connection, writes: Sequence[_CartWrite]) -> None:
        """Change the items' rows (locked, and as read) of carts just changed."""
        for write in writes:
            for before, after in write._items():
                write._apply_item(connection, before, after)

    def _apply_item(self, connection: Connection, before: PurchaseRecord, after: PurchaseRecord) -> None:
        raise NotImplementedError

    def _items(self) -> zip:
        """Each item as read, and as it becomes."""
        return zip(self.seen.purchases, self.cart.purchases, strict=True)


@dataclass
class CartStart(_CartAnswer):
    """A cart written pending, naming the attempt about to take its holds (carts.py); left out
    when its token is taken."""

    cart: CartRecord

    takes_fence = True  # it touches no deal: a batch of one deal's fenced writes may take it along

    @classmethod
    def apply_all(cls, connection, writes, fence) -> list[bool]:
        started = cart_rows.start_many(connection, [write.cart for write in writes])
        return [write.cart.token in started for write in writes]


@dataclass
class CartReservation(_CartAnswer):
    """The pending cart becomes reserved, with its items' purchases."""

    cart: CartRecord
    attempt: str | None

    @classmethod
    def apply_all(cls, connection, writes, fence) -> list[bool]:
        changes = [
            cart_rows.CartChange(w.cart.token, "pending", w.attempt, "reserved", w.cart.reserved_until) for w in writes
        ]
        changed = cart_rows.change_many(connection, changes)
        purchases = [p for w in writes if w.cart.token in changed for p in w.cart.purchases]
        if purchases and len(rows.insert_reservations(connection, purchases)) != len(purchases):
            raise RuntimeError("a cart item's token was taken")  # derived from its cart's
        return [w.cart.token in changed for w in writes]

    def events(self) -> Sequence[ev.Event]:
        items = [_purchase_event(ev.PURCHASE_RESERVED, purchase) for purchase in self.cart.purchases]
        return [*items, _cart_event(ev.CART_RESERVED, self.cart)]


@dataclass
class CartFulfilment(_CartWrite):
    fulfilments: list[Fulfilment]

    @classmethod
    def _apply_items(cls, connection: Connection, writes: Sequence[CartFulfilment]) -> None:
        fulfilments = [f for write in writes for f in write.fulfilments]
        if fulfilments and not all(Fulfilment.apply_all(connection, fulfilments, None)):
            raise RuntimeError("a cart item moved on under its lock")

    def events(self) -> Sequence[ev.Event]:
        items = [event for fulfilment in self.fulfilments for event in fulfilment.events()]
        return [*items, _cart_event(ev.CART_FULFILLED, self.cart)]


@dataclass
class CartEnd(_CartWrite):
    """Every reserved item released (or expired, its hold over), and the cart with them."""

    def _apply_item(self, connection: Connection, before: PurchaseRecord, after: PurchaseRecord) -> None:
        if before.fulfillment_state == "reserved":
            rows.end_hold(connection, after.token, before.reserved_until, after.fulfillment_state, after.ended_at)

    def events(self) -> Sequence[ev.Event]:
        ended = [ended_event(after) for before, after in self._items() if before.fulfillment_state == "reserved"]
        whole = [_cart_event(ev.CART_RELEASED, self.cart)] if self.cart.state == "released" else []
        return [*ended, *whole]


@dataclass
class CartExtension(_CartWrite):
    """Every item's hold, and the cart's, end later."""

    def _apply_item(self, connection: Connection, before: PurchaseRecord, after: PurchaseRecord) -> None:
        rows.extend_hold(connection, after.token, before.reserved_until, after.reserved_until)


def _purchase_event(kind: str, record: PurchaseRecord, via: str | None = None) -> ev.Event:
    return ev.Event(kind, record.account_id, record.deal_id, purchase=record, via=via)


def ended_event(record: PurchaseRecord) -> ev.Event:
    """A hold that ended: released, or expired when it had ended before its release came."""
    kind = ev.PURCHASE_RELEASED if record.fulfillment_state == "released" else ev.PURCHASE_EXPIRED
    return _purchase_event(kind, record)


def _cart_event(kind: str, cart: CartRecord) -> ev.Event:
    return ev.Event(kind, cart.account_id, None, cart=cart)
