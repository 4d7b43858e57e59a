"""The v3 purchases ledger (ConvertKit-compatible) on the same purchase store as v1.

Every fulfilled purchase is in the ledger: v1 rows once claimed or bought directly, v3 rows as
they are recorded. A v3 product whose `sku` names one of the account's deals (its sku, or its
id when the deal has no sku: the sku a v1 purchase shows in the ledger) takes that deal's stock
through the same Lua script as a v1 direct purchase, all or nothing across the purchase:

1. take each deal line's units in turn (by deal id, the order fences are taken in); when one
   fails, give back the ones already taken (each `unbuy` only in the generation it was taken
   from) and answer with that failure;
2. commit the row and its lines under the deals' shared fences (`PurchaseService.commit_takes`),
   which checks that no rebuild ran since the takes and undoes them all if the SQL side fails
   before its commit.

A `transaction_id` is recorded at most once per account (a unique constraint): the same request
body again gets the existing record and takes no stock; a different body is a conflict. Requests
with one transaction_id that take stock run one at a time (a short Redis lock), so a duplicate
arriving while the first is between its takes and its commit waits and then answers with the
record, instead of taking the stock a second time. Should the lock be lost, the constraint still
decides: the loser's commit fails before it happens, its takes are undone, and it answers with
the winner's record.

Product lines whose sku names no deal take no stock: they are the merchant's own records.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import orjson
from sqlalchemy import Connection, and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, lazyload

from app.money import minor_to_decimal
from app.store import ledger as store
from app.store.db import Database
from app.store.models import Deal, Purchase, PurchaseItem, utcnow
from app.timeutil import from_ms, to_ms

from . import keys
from .errors import (
    OverPurchaseLimit,
    ProductRejected,
    ProductSoldOut,
    PurchaseNotFound,
    SoldOut,
    Stale,
    TransactionConflict,
    Unavailable,
)
from .purchases import ATTEMPTS, PurchaseService, new_token
from .stock import LiveStock, Take

log = logging.getLogger(__name__)

#: A request holds its transaction_id's lock at most this long (it needs milliseconds).
TRANSACTION_LOCK_MS = 30_000

DEFAULT_CURRENCY = "USD"
DEFAULT_STATUS = "paid"
ZERO = Decimal(0)


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
            **{name: money(getattr(self, name)) for name in ("subtotal", "shipping", "discount", "tax", "total")},
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
    def __init__(
        self, db: Database, stock: LiveStock, purchases: PurchaseService, lock_wait_seconds: float = 5.0
    ) -> None:
        self.db = db
        self.stock = stock
        self.purchases = purchases
        self.lock_wait_seconds = lock_wait_seconds

    # -- reads ----------------------------------------------------------------------------

    def page(self, account_id: int, page: int, per_page: int = store.PER_PAGE) -> tuple[Sequence[Purchase], int]:
        """(purchases on `page`, oldest first; purchases in the ledger)."""
        return store.read_page(self.db, account_id, page, per_page)

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
        now = from_ms(to_ms(now or utcnow()))
        fingerprint = new.fingerprint()
        with self.db.read() as session:
            existing = self._by_transaction_id(session, account_id, new.transaction_id)
            if existing is not None:
                return self._replay(existing, fingerprint)
            deals = self._deals_named(session, account_id, [p.sku for p in new.products])

        deal_lines = sorted(
            (DealLine(i, p, deals[p.sku]) for i, p in enumerate(new.products) if p.sku in deals),
            key=lambda line: line.deal.id,
        )
        for line in deal_lines:
            if line.product.quantity < 1:
                raise ProductRejected(f"Quantity must be at least 1 for product: {line.label} (its sku names a deal)")
        write = functools.partial(self._write, account_id, new, deals, fingerprint, now)
        try:
            if not deal_lines:
                with self.db.begin() as connection:
                    return Recorded(write(connection), True)
            with self._transaction_lock(account_id, new.transaction_id):
                # A duplicate that waited for the lock finds the record here.
                with self.db.read() as session:
                    existing = self._by_transaction_id(session, account_id, new.transaction_id)
                if existing is not None:
                    return self._replay(existing, fingerprint)
                for _ in range(ATTEMPTS):
                    takes = self._take_all(account_id, deal_lines, to_ms(now))
                    try:
                        purchase = self.purchases.commit_takes(
                            takes, write, undo=functools.partial(self._undo, takes), idempotency=None
                        )
                        return Recorded(purchase, True)
                    except Stale:
                        continue
                raise Unavailable("the deals' live state kept being rebuilt; retry")
        except IntegrityError:
            # Someone recorded this transaction_id first (our takes, if any, are undone).
            with self.db.read() as session:
                existing = self._by_transaction_id(session, account_id, new.transaction_id)
            if existing is None:
                raise
            return self._replay(existing, fingerprint)

    # -- helpers --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction_lock(self, account_id: int, transaction_id: str) -> Iterator[None]:
        """Serialise the requests recording one transaction_id that take stock. Only a
        courtesy to duplicates (the unique constraint is what guarantees one record): if the
        lock is lost (expiry, a Redis flush), a racing duplicate may still answer sold out."""
        client = self.stock.client
        key = keys.transaction_lock(account_id, transaction_id)
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self.lock_wait_seconds
        while not client.set(key, token, nx=True, px=TRANSACTION_LOCK_MS):
            if time.monotonic() >= deadline:
                raise Unavailable("another request with this transaction_id is still being recorded; retry")
            time.sleep(0.02)
        try:
            yield
        finally:
            try:
                if client.get(key) == token:
                    client.delete(key)
            except Exception:
                log.exception("could not free a transaction_id lock; it expires by itself")

    def _take_all(self, account_id: int, lines: list[DealLine], now_ms: int) -> list[Take]:
        """Take every deal line's units, or none of them."""
        takes: list[Take] = []
        try:
            for line in lines:
                buy = functools.partial(self.stock.buy, line.deal.id, account_id, line.product.quantity, now_ms)
                try:
                    takes.append(self.purchases.with_loaded(line.deal.id, buy))
                except SoldOut as error:
                    raise ProductSoldOut(error.available, error.requested, line.label) from None
                except OverPurchaseLimit as error:
                    raise ProductRejected(
                        f"Quantity must be at most {error.limit} for product: {line.label}"
                        " (the deal's max_per_purchase)"
                    ) from None
        except BaseException:
            self._give_back(takes)
            raise
        return takes

    def _give_back(self, takes: list[Take]) -> None:
        """Undo takes after a failure; a deal whose take cannot be undone is rebuilt from SQL."""
        for take in takes:
            try:
                self.stock.unbuy(take)
            except Exception:
                log.exception("unbuy failed; dropping the deal's live state", extra={"deal_id": take.deal_id})
                try:
                    self.stock.invalidate(take.deal_id)
                except Exception:
                    log.exception("invalidate failed; the reconciler will repair it")

    def _undo(self, takes: list[Take]) -> None:
        """`commit_takes`'s undo: all takes, raising if any could not be undone (it then drops
        the deals' live state so that they are rebuilt from SQL)."""
        failed: Exception | None = None
        for take in takes:
            try:
                self.stock.unbuy(take)
            except Exception as error:
                failed = failed or error
        if failed is not None:
            raise failed

    def _write(
        self,
        account_id: int,
        new: NewPurchase,
        deals: dict[str, Deal],
        fingerprint: str,
        now: datetime,
        connection: Connection,
    ) -> Purchase:
        items = []
        for position, product in enumerate(new.products):
            deal = deals.get(product.sku)
            unit_price = product.unit_price
            if unit_price is None:
                unit_price = minor_to_decimal(deal.price_per_unit, deal.currency) if deal else ZERO
            items.append(
                PurchaseItem(
                    position=position,
                    name=product.name,
                    sku=product.sku,
                    unit_price=unit_price,
                    quantity=product.quantity,
                    deal_id=deal.id if deal else None,
                )
            )
        purchase = Purchase(
            token=new_token(),
            account_id=account_id,
            source="v3",
            units=sum(p.quantity for p in new.products),
            fulfillment_state="fulfilled",
            payment_state="paid",
            fulfilled_at=now,
            created_at=now,
            transaction_id=new.transaction_id,
            status=new.status,
            email_address=new.email_address,
            currency=new.currency,
            transaction_time=new.transaction_time or now,
            subtotal=new.subtotal,
            shipping=new.shipping,
            discount=new.discount,
            tax=new.tax,
            total=new.total,
            request_fingerprint=fingerprint,
            items=items,
            coupons=[],
        )
        # A duplicate transaction_id fails at the flush, before the commit, so takes are undone
        # exactly.
        with self.db.orm(connection) as session:
            session.add(purchase)
        return purchase

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
