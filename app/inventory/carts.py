"""Carts: several deals held, claimed, released or extended together, all or nothing.

Each item of a cart is a normal v1 purchase (a hold of one deal) with `cart_id`; a cart is the
write protocol (protocol.py) over several deals at once: its scripts, one per deal in id order,
go in one round trip (`Protocol.take_all`: when one is refused, the ones made are given back),
and one commit writes every item and the cart, or nothing. Deals on different Redis Cluster
masters are no different: no script touches two deals.

A crash mid-cart must leave no half-held cart: the cart row is written `pending`, naming the
attempt (its nonce) about to take the holds, before the first hold is taken (committed as any
write is, with whatever else waits: `CartStart`). An attempt that
dies leaves a pending cart whose holds have no rows; a retry with the same Idempotency-Key takes
the cart over (after the same 2 s as any abandoned take) and adopts the holds, and the
reconciler (`abandon_stale`) gives back the holds of carts nobody took over and marks them
abandoned; a later retry with the key starts that cart again (one cart per key). A cart whose
holds cannot all be had is deleted, so that a retry decides afresh.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from app.core import events as ev
from app.core.errors import KeyReused, RequestInProgress
from app.core.idempotency import Keyed
from app.core.timeutil import from_ms, to_ms
from app.store import cart_rows
from app.store.batched import Batched
from app.store.cart_rows import CartRecord
from app.store.db import Database
from app.store.purchase_rows import PurchaseRecord

from .after_commit import best_effort, emit
from .errors import (
    AlreadyClaimed,
    CartItemRefused,
    CartNotFound,
    InventoryError,
    NotStarted,
    OverPurchaseLimit,
    OverUserLimit,
    PriceChanged,
    SaleEnded,
    Skipped,
    SoldOut,
    Stale,
)
from .protocol import Protocol
from .purchases import (
    ClaimRequest,
    HoldKeeper,
    HoldPolicy,
    _fulfil,
    _line,
    _sold_out,
    _Token,
    claimant,
    ended_hold,
    new_coupon_codes,
    new_record,
)
from .stock import Found, LiveStock, Order, Taken
from .writes import (
    CartEnd,
    CartExtension,
    CartFulfilment,
    CartReservation,
    CartStart,
    Fulfilment,
    Unchanged,
    Write,
)

log = logging.getLogger(__name__)

#: Most items in a cart.
MAX_ITEMS = 50
#: A cart left pending this long by an attempt that nobody took over is given up by the
#: reconciler (its holds given back); CART_ABANDON_SECONDS sets it.
ABANDON_SECONDS = 30


#: What an item's deal may refuse, refusing the whole cart.
ITEM_REFUSALS = (SoldOut, OverUserLimit, OverPurchaseLimit, NotStarted, SaleEnded, PriceChanged)


def item_token(cart_token: str, deal_id: int) -> str:
    """The purchase token of a cart's item: derived from the cart's, so a retry of the cart
    finds its items' holds."""
    digest = hashlib.sha256(f"{cart_token}\n{deal_id}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def attempt_label(nonce: str, at: datetime) -> str:
    return f"{nonce}|{to_ms(at)}"


def attempt_parts(label: str | None) -> tuple[str, int]:
    nonce, _, born = (label or "|0").partition("|")
    return nonce, int(born or 0)


@dataclass(eq=False)
class CartService(HoldKeeper):
    db: Database
    stock: LiveStock
    protocol: Protocol
    policy: HoldPolicy = HoldPolicy()
    events: ev.Events = ev.NULL_EVENTS
    abandon_seconds: int = ABANDON_SECONDS
    noun = "cart"

    def __post_init__(self) -> None:
        # Claims, releases and extensions read their cart first: together, on one connection
        # (as PurchaseService reads purchases).
        self._kept_reads = self.db.kept_reads()
        self._reads: Batched[str, CartRecord] = Batched(self._read_many, "cart-reads")

    # -- writes ---------------------------------------------------------------------------

    def reserve(
        self,
        account_id: int,
        items: list[tuple[int, int]],
        *,
        user_id: str | None = None,
        keyed: Keyed | None = None,
        now: datetime | None = None,
    ) -> CartRecord:
        """Hold every (deal_id, units) of `items` (each deal at most once), or none."""
        items = sorted(items)
        token = _Token(keyed, self.protocol.began(now))

        def attempt(nonce: str) -> CartRecord:
            at = self.protocol.now(now)
            ends_ms = to_ms(at) + self.policy.ttl_seconds * 1000
            cart = self._begin(account_id, token.value, user_id, items, nonce, at)
            asks = [
                self.stock.reserving(
                    Order(
                        deal_id,
                        account_id,
                        item_token(cart.token, deal_id),
                        nonce,
                        units,
                        user_id or "",
                        token.since_ms,
                    ),
                    to_ms(at),
                    ends_ms,
                )
                for deal_id, units in items
            ]
            try:
                takes = self.protocol.take_all(asks, self._settle(nonce, account_id), _refused_item)
            except InventoryError:
                self._drop_pending(cart)
                raise
            cart.state, cart.reserved_until = "reserved", from_ms(ends_ms)
            cart.purchases = [
                new_record(
                    take, at, user_id=user_id, reserved_at=at, reserved_until=from_ms(ends_ms), cart_id=cart.token
                )
                for take in takes
            ]
            try:
                answer = self.protocol.commit(CartReservation(cart, cart.attempt), takes, keyed)
            except Skipped as skipped:
                if skipped.why != "taken":
                    raise
                # The pending row moved on (given up by the reconciler, or taken over by a
                # retry): the next attempt reads it again, under the same token.
                raise Stale() from None
            for take in takes:
                if take.needs_index:
                    best_effort(self.stock.index, take.deal_id, take.ends_ms)
            emit(self.events, *_sold_out(takes))
            return answer

        return self.protocol.run(keyed, attempt, on_skipped=token.renew)

    def _claim(
        self, cart: CartRecord, at: datetime, nonce: str, request: ClaimRequest, keyed: Keyed | None
    ) -> CartRecord:
        """An item whose hold ended and whose units are gone is refused (naming its deal) and
        the other holds stay held."""
        account_id = cart.account_id
        buyer = claimant(cart.user_id, request.user_id)
        if cart.state == "fulfilled":
            if any(p.user_id != buyer for p in cart.purchases):
                raise AlreadyClaimed("the cart was claimed by another user")
            return self.protocol.commit(Unchanged(cart), [], keyed) if keyed else cart
        todo = [p for p in cart.purchases if p.fulfillment_state != "fulfilled"]
        if any(p.user_id != buyer for p in cart.purchases if p.fulfillment_state == "fulfilled"):
            raise AlreadyClaimed("an item of the cart was claimed by another user")
        asks = [
            self.stock.claiming(request.order(p.deal_id, account_id, p.token, nonce, p.units, buyer), to_ms(at))
            for p in todo
        ]
        takes = self.protocol.take_all(
            asks, self._settle(nonce, account_id, user_id=buyer, creates=False), _refused_item
        )
        fulfilments = []
        for seen, take in zip(todo, takes, strict=True):
            record = replace(seen, units=take.units)
            _fulfil(record, buyer, request.credit_card_id, at)
            record.coupons = new_coupon_codes(record.units)
            fulfilments.append(
                Fulfilment(record, seen.fulfillment_state, seen.reserved_until, _line(record, take), record.coupons)
            )
        done = {f.record.token: f.record for f in fulfilments}
        fulfilled = replace(cart, state="fulfilled", purchases=[done.get(p.token, p) for p in cart.purchases])
        answer = self.protocol.commit(CartFulfilment(fulfilled, cart, fulfilments), takes, keyed)
        emit(
            self.events,
            *(
                ev.Event(ev.PURCHASE_FULFILLED, account_id, f.record.deal_id, purchase=f.record, via="claim")
                for f in fulfilments
            ),
            *_sold_out(takes),
        )
        return answer

    def _holds(self, record: CartRecord) -> list[PurchaseRecord]:
        return record.purchases

    def _state(self, record: CartRecord) -> str:
        return record.state

    def _held(self, record: CartRecord) -> tuple[datetime, datetime]:
        return record.created_at, record.reserved_until

    def _ended(self, seen: CartRecord, at: datetime) -> Write:
        return CartEnd(replace(seen, state="released", purchases=[ended_hold(p, at) for p in seen.purchases]), seen)

    def _extended(self, seen: CartRecord, holds: list[PurchaseRecord]) -> Write:
        extended = replace(seen, reserved_until=min(p.reserved_until for p in holds), purchases=holds)
        return CartExtension(extended, seen)

    # -- reads ----------------------------------------------------------------------------

    def get(self, account_id: int, token: str) -> CartRecord:
        return self._read(account_id, token)

    # -- the reconciler -------------------------------------------------------------------

    def abandon_stale(self, now: datetime | None = None) -> int:
        """Give up carts left pending by attempts that died: give back their holds (only the
        dead attempt's own: a retry that adopted them keeps them) and mark them abandoned."""
        now = now or self.protocol.clock()
        with self.db.reading() as connection:
            stale = cart_rows.stale_pending(connection, now - timedelta(seconds=self.abandon_seconds))
        abandoned = 0
        for cart in stale:
            nonce, born = attempt_parts(cart.attempt)
            if to_ms(now) - born < self.abandon_seconds * 1000:
                continue  # taken over recently by a retry
            self.protocol.committer.give_back(
                [
                    Taken(deal_id, cart.account_id, item_token(cart.token, deal_id), nonce, "", units)
                    for deal_id, units in cart.items
                ]
            )
            with self.db.begin() as connection:
                if cart_rows.change(connection, cart.token, "pending", cart.attempt, state="abandoned"):
                    abandoned += 1
        if abandoned:
            log.warning("carts left pending by dead attempts given up", extra={"carts": abandoned})
        return abandoned

    # -- helpers --------------------------------------------------------------------------

    def _begin(
        self, account_id: int, token: str, user_id: str | None, items: list[tuple[int, int]], nonce: str, at: datetime
    ) -> CartRecord:
        """The cart, pending and this attempt's, before any hold is taken (see the module
        docstring). A committed cart with this token: Skipped (its kept answer, or a new cart)."""
        label = attempt_label(nonce, at)
        cart = CartRecord(
            token=token, account_id=account_id, user_id=user_id, attempt=label, items=items, created_at=at
        )
        try:
            return self.protocol.commit(CartStart(cart))  # with whatever else waits to commit
        except Skipped:
            pass  # the token is taken: by an earlier attempt of this cart, or a committed cart
        with self.db.begin() as connection:
            existing = cart_rows.read(connection, token)
            if existing is None:
                raise Stale()  # given up just now (a refused attempt's): try again
            if existing.account_id != account_id or existing.state not in ("pending", "abandoned"):
                raise Skipped("taken")
            if existing.items != items or existing.user_id != user_id:
                raise KeyReused()
            if existing.state == "abandoned":
                # Its holds were given back: the retry starts the same cart afresh (as if made
                # now), so a key keeps one cart however many of its attempts died.
                afresh = {"state": "pending", "created_at": at}
            else:
                _, born = attempt_parts(existing.attempt)
                if to_ms(at) - born < self.protocol.in_progress_ms:
                    raise RequestInProgress()
                afresh = {}  # taken over: its holds are adopted
            # Unless another retry took it first.
            if not cart_rows.change(connection, token, existing.state, existing.attempt, attempt=label, **afresh):
                raise Stale()
            return replace(existing, attempt=label, **afresh)

    def _drop_pending(self, cart: CartRecord) -> None:
        try:
            with self.db.begin() as connection:
                cart_rows.drop_pending(connection, cart.token, cart.attempt)
        except Exception:
            log.exception("could not drop a refused cart; the reconciler gives it up")

    def _settle(
        self, nonce: str, account_id: int, *, user_id: str = "", creates: bool = True
    ) -> Callable[[Taken | Found], Taken]:
        def settle(got: Taken | Found) -> Taken:
            return self.protocol.settle(got, nonce=nonce, account_id=account_id, user_id=user_id, creates=creates)

        return settle

    def _read(self, account_id: int, token: str) -> CartRecord:
        cart = self._reads.get(token)
        if cart is None or cart.account_id != account_id or cart.state in ("pending", "abandoned"):
            raise CartNotFound()
        # Two requests for one cart in a batch share what was read: each gets its own copy.
        purchases = [replace(p, coupons=list(p.coupons)) for p in cart.purchases]
        return replace(cart, items=list(cart.items), purchases=purchases)

    def _read_many(self, tokens: list[str]) -> dict[str, CartRecord]:
        with self._kept_reads.reading() as connection:
            return cart_rows.read_many(connection, tokens)


def _refused_item(deal_id: int, error: Exception) -> Exception:
    """An item's refusal names its deal."""
    return CartItemRefused(deal_id, error) if isinstance(error, ITEM_REFUSALS) else error
