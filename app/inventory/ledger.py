"""The v3 purchases ledger (ConvertKit-compatible) on the same purchase store as v1.

Every fulfilled purchase is in the ledger: v1 rows once claimed or bought directly, v3 rows as
they are recorded. A v3 product whose `sku` names one of the account's deals (its sku, or its
id when the deal has no sku: the sku a v1 purchase shows in the ledger) takes that deal's stock
through the same Lua script as a v1 direct purchase, all or nothing across the purchase: the
write protocol (protocol.py) takes each deal line's units in deal id order, gives back the ones
taken when one fails, and commits the row and its lines under the deals' shared fences.

A `transaction_id` is recorded at most once per account (a unique constraint). Its purchase's
token is derived from it, so a duplicate's script finds the first one's takes instead of taking
again: a duplicate arriving while the first runs waits for it and answers with the record; one
arriving after the first died adopts its takes. The same body again gets the existing record and
takes no stock; a different body is a conflict.

Product lines whose sku names no deal take no stock: they are the merchant's own records.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import orjson
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, lazyload, selectinload

from app.core.errors import RequestInProgress, Unavailable
from app.core.idempotency import derived_token
from app.core.money import minor_to_decimal
from app.core.timeutil import to_ms
from app.store import ledger as store
from app.store.db import Database
from app.store.models import Deal, Purchase
from app.store.purchase_rows import Line, PurchaseRecord

from .errors import OverPurchaseLimit, ProductRejected, ProductSoldOut, PurchaseNotFound, SoldOut, TransactionConflict
from .protocol import Protocol
from .stock import Found, LiveStock, Order, Taken
from .writes import LedgerEntry

log = logging.getLogger(__name__)

#: How often a duplicate looks again for the record of a request with its transaction_id that
#: is still running.
DUPLICATE_POLL_SECONDS = 0.02

#: Purchases a page of the ledger holds (ConvertKit's page size).
PER_PAGE = store.PER_PAGE

DEFAULT_CURRENCY = "USD"
DEFAULT_STATUS = "paid"
ZERO = Decimal(0)
#: A purchase's money amounts besides its products' prices (as NewPurchase and the row name them).
AMOUNTS = ("subtotal", "shipping", "discount", "tax", "total")


@dataclass(frozen=True)
class Product:
    sku: str
    name: str | None = None
    #: None: not given (a deal line then takes the deal's price, any other line 0).
    unit_price: Decimal | None = None
    quantity: int = 1


@dataclass(frozen=True)
class NewPurchase:
    """A v3 purchase as the client sent it, checked and normalised (currency upper-cased,
    money as exact Decimals); None where the client gave nothing and the default is "now"."""

    transaction_id: str
    email_address: str
    currency: str = DEFAULT_CURRENCY
    transaction_time: datetime | None = None
    status: str = DEFAULT_STATUS
    subtotal: Decimal = ZERO
    shipping: Decimal = ZERO
    discount: Decimal = ZERO
    tax: Decimal = ZERO
    total: Decimal = ZERO
    products: tuple[Product, ...] = ()

    def fingerprint(self) -> str:
        """Equal for two requests that describe the same purchase, however they spelled it
        (20 or 20.00, "jpy" or "JPY", an omitted default or the default itself)."""

        def money(value: Decimal | None) -> str | None:
            return None if value is None else f"{value:.4f}"

        canonical = {
            "transaction_id": self.transaction_id,
            "email_address": self.email_address,
            "currency": self.currency,
            "transaction_time": None if self.transaction_time is None else self.transaction_time.isoformat(),
            "status": self.status,
            **{name: money(getattr(self, name)) for name in AMOUNTS},
            "products": [[p.sku, p.name, money(p.unit_price), p.quantity] for p in self.products],
        }
        return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Recorded:
    purchase: Purchase
    #: False when the transaction_id was already recorded from the same body (a replay).
    created: bool


@dataclass(frozen=True)
class DealLine:
    position: int
    product: Product
    deal: Deal

    @property
    def label(self) -> str:
        return self.product.name or self.product.sku


class LedgerService:
    def __init__(self, db: Database, stock: LiveStock, protocol: Protocol, wait_seconds: float = 5.0) -> None:
        self.db = db
        self.stock = stock
        self.protocol = protocol
        #: How long a duplicate waits for a request with its transaction_id that is still running.
        self.wait_seconds = wait_seconds

    # -- reads ----------------------------------------------------------------------------

    def page(self, account_id: int, page: int, per_page: int = PER_PAGE) -> tuple[Sequence[Purchase], int]:
        """(purchases on `page`, oldest first; purchases in the ledger)."""
        return store.read_page(self.db, account_id, page, per_page)

    def seal_pending(self) -> int:
        """Number the new purchases of every account (the worker, between reads); returns how many."""
        return store.seal_pending(self.db)

    def get(self, account_id: int, purchase_id: int) -> Purchase:
        with self.db.read() as session:
            return self._owned(session, account_id, purchase_id)

    # -- writes ---------------------------------------------------------------------------

    def set_status(self, account_id: int, purchase_id: int, status: str) -> Purchase:
        """The only change a ledger entry accepts. It is a label: "refund" gives no stock back."""
        with self.db.transaction() as session:
            purchase = self._owned(session, account_id, purchase_id, lock=True)
            purchase.status = status
            session.flush()
            return purchase

    def create(self, account_id: int, new: NewPurchase, *, now: datetime | None = None) -> Recorded:
        fingerprint = new.fingerprint()
        token = derived_token(account_id, "\nv3\n" + new.transaction_id)
        since_ms = self.protocol.began(now)  # the token is shared: `Order.since_ms`
        deadline = time.monotonic() + self.wait_seconds
        while True:
            existing = self._recorded(account_id, new.transaction_id)
            if existing is not None:
                return self._replay(existing, fingerprint)
            try:
                purchase_id = self.protocol.run(
                    None, lambda nonce: self._record(account_id, new, token, since_ms, fingerprint, nonce, now)
                )
            except RequestInProgress:
                # A request with this transaction_id is between its takes and its commit.
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        "another request with this transaction_id is still being recorded; retry"
                    ) from None
                time.sleep(DUPLICATE_POLL_SECONDS)
                continue
            if purchase_id is None:
                continue  # recorded by a duplicate meanwhile: answer with its record
            with self.db.read() as session:
                return Recorded(self._loaded(session, purchase_id), True)

    # -- helpers --------------------------------------------------------------------------

    def _record(
        self,
        account_id: int,
        new: NewPurchase,
        token: str,
        since_ms: int,
        fingerprint: str,
        nonce: str,
        now: datetime | None,
    ) -> int | None:
        """One attempt: take every deal line's units, then commit the row and its lines.
        Returns the new row's id, or None when the transaction_id was recorded meanwhile."""
        at = self.protocol.now(now)
        with self.db.read() as session:
            if self._recorded(account_id, new.transaction_id, session) is not None:
                return None
            deals = self._deals_named(session, account_id, [p.sku for p in new.products])
        deal_lines = sorted(
            (DealLine(i, p, deals[p.sku]) for i, p in enumerate(new.products) if p.sku in deals),
            key=lambda line: line.deal.id,
        )
        for line in deal_lines:
            if line.product.quantity < 1:
                raise ProductRejected(f"Quantity must be at least 1 for product: {line.label} (its sku names a deal)")

        def settle(got: Taken | Found) -> Taken:
            return self.protocol.settle(got, nonce=nonce, account_id=account_id)

        asks = [
            self.stock.buying(
                Order(line.deal.id, account_id, token, nonce, line.product.quantity, since_ms=since_ms), to_ms(at)
            )
            for line in deal_lines
        ]
        takes = self.protocol.take_all(asks, settle, _refused_line({line.deal.id: line.label for line in deal_lines}))
        record = PurchaseRecord(
            token=token,
            account_id=account_id,
            source="v3",
            units=sum(p.quantity for p in new.products),
            fulfillment_state="fulfilled",
            payment_state="paid",
            fulfilled_at=at,
            created_at=at,
            transaction_id=new.transaction_id,
            status=new.status,
            email_address=new.email_address,
            currency=new.currency,
            transaction_time=new.transaction_time or at,
            request_fingerprint=fingerprint,
            **{name: getattr(new, name) for name in AMOUNTS},
        )
        lines = [self._line(position, product, deals.get(product.sku)) for position, product in enumerate(new.products)]
        return self.protocol.commit(LedgerEntry(record, lines), takes).id

    @staticmethod
    def _line(position: int, product: Product, deal: Deal | None) -> Line:
        unit_price = product.unit_price
        if unit_price is None:
            unit_price = minor_to_decimal(deal.price_per_unit, deal.currency) if deal else ZERO
        return Line(
            name=product.name,
            sku=product.sku,
            unit_price=unit_price,
            quantity=product.quantity,
            deal_id=deal.id if deal else None,
            position=position,
        )

    def _recorded(self, account_id: int, transaction_id: str, session: Session | None = None) -> Purchase | None:
        if session is None:
            with self.db.read() as session:
                return self._by_transaction_id(session, account_id, transaction_id)
        return self._by_transaction_id(session, account_id, transaction_id)

    @staticmethod
    def _loaded(session: Session, purchase_id: int) -> Purchase:
        return session.scalar(
            select(Purchase)
            .where(Purchase.id == purchase_id)
            .options(selectinload(Purchase.items), lazyload(Purchase.coupons))
        )

    @staticmethod
    def _replay(existing: Purchase, fingerprint: str) -> Recorded:
        if existing.request_fingerprint != fingerprint:
            raise TransactionConflict(existing.transaction_id, existing.id)
        return Recorded(existing, False)

    @staticmethod
    def _by_transaction_id(session: Session, account_id: int, transaction_id: str) -> Purchase | None:
        return session.scalar(
            select(Purchase)
            .where(Purchase.account_id == account_id, Purchase.transaction_id == transaction_id, store.IN_LEDGER)
            .options(lazyload(Purchase.coupons))
        )

    @staticmethod
    def _deals_named(session: Session, account_id: int, skus: list[str]) -> dict[str, Deal]:
        """The account's deals that `skus` name: by sku, or by id for a deal without one."""
        if not skus:
            return {}
        ids = [int(sku) for sku in skus if sku.isascii() and sku.isdigit() and len(sku) <= 18]
        condition = Deal.sku.in_(skus)
        if ids:
            condition = or_(condition, and_(Deal.sku.is_(None), Deal.id.in_(ids)))
        deals = session.scalars(select(Deal).where(Deal.account_id == account_id, condition)).all()
        # A deal's own sku wins over another deal's id that happens to read the same.
        named = {str(deal.id): deal for deal in deals if deal.sku is None}
        named.update({deal.sku: deal for deal in deals if deal.sku is not None})
        return {sku: named[sku] for sku in skus if sku in named}

    @staticmethod
    def _owned(session: Session, account_id: int, purchase_id: int, *, lock: bool = False) -> Purchase:
        query = select(Purchase).where(Purchase.id == purchase_id).options(lazyload(Purchase.coupons))
        if lock:
            query = query.with_for_update()
        purchase = session.scalar(query)
        if purchase is None or purchase.account_id != account_id or purchase.fulfillment_state != "fulfilled":
            raise PurchaseNotFound()
        return purchase


def _refused_line(labels: dict[int, str]) -> Callable[[int, Exception], Exception]:
    """A line's refusal in the ConvertKit shape, naming its product."""

    def refused(deal_id: int, error: Exception) -> Exception:
        if isinstance(error, SoldOut):
            return ProductSoldOut(error.available, error.requested, labels[deal_id])
        if isinstance(error, OverPurchaseLimit):
            return ProductRejected(
                f"Quantity must be at most {error.limit} for product: {labels[deal_id]} (the deal's max_per_purchase)"
            )
        return error

    return refused
