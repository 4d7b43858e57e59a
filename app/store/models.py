"""Durable records: accounts, deals, purchases (reservations included), coupons, ledger items.

SQL is the source of truth. Redis holds a copy of each deal's live stock and holds that can be
rebuilt from these tables at any time (see app/inventory/rebuild.py), which is why every
reservation is a row here too, with the instant its hold ends.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Autoincrementing 64-bit keys; SQLite only autoincrements an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Stores naive UTC on every backend and always hands back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=UTC)


def partial_index(name: str, *columns: str, where: str, unique: bool = False) -> Index:
    """An index of only the rows that `where` (SQL) matches, on PostgreSQL and SQLite alike."""
    return Index(name, *columns, unique=unique, postgresql_where=text(where), sqlite_where=text(where))


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # sha256 of the secret: secrets are 192 random bits, so a fast hash is enough to make a
    # leaked table useless, and it lets us look the account up by index.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Deal(Base):
    __tablename__ = "deals"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    title: Mapped[str] = mapped_column(String(500))
    sku: Mapped[str | None] = mapped_column(String(200))
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    #: Minor units (cents).
    price_per_unit: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(BigInteger)
    max_per_purchase: Mapped[int | None] = mapped_column(Integer)
    max_per_user: Mapped[int | None] = mapped_column(Integer)
    #: The sale window: reserves and purchases before `starts_at` or from `ends_at` on are
    #: refused (None: open on that side).
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Readable without a secret, by storefronts (GET /v1/public/deals/:id and its stream).
    public: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("account_id", "sku"),)


class Purchase(Base):
    """One row per purchase, from either API.

    v1 rows start as reservations (`fulfillment_state='reserved'`, `reserved_until` set) and are
    known to clients by `token`. v3 rows are created fulfilled. A row is in the v3 ledger once it
    is fulfilled; `ledger_seq` numbers the ledger densely per account (assigned after commit, see
    app/store/ledger.py) so that any page is an index range.
    """

    __tablename__ = "purchases"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token: Mapped[str] = mapped_column(String(40), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    deal_id: Mapped[int | None] = mapped_column(ForeignKey("deals.id"))
    source: Mapped[str] = mapped_column(String(2))  # "v1" | "v3"
    units: Mapped[int] = mapped_column(BigInteger, default=0)
    price_per_unit: Mapped[int | None] = mapped_column(BigInteger)
    user_id: Mapped[str | None] = mapped_column(String(200))
    credit_card_id: Mapped[str | None] = mapped_column(String(200))
    session_id: Mapped[str | None] = mapped_column(String(200))
    fulfillment_state: Mapped[str] = mapped_column(String(10))
    payment_state: Mapped[str] = mapped_column(String(10))
    reserved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reserved_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    fulfilled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    # v3 ledger fields
    transaction_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str | None] = mapped_column(String(50))
    email_address: Mapped[str | None] = mapped_column(String(320))
    currency: Mapped[str | None] = mapped_column(String(3))
    transaction_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    subtotal: Mapped[Decimal | None] = mapped_column(Numeric(20, 4))
    shipping: Mapped[Decimal | None] = mapped_column(Numeric(20, 4))
    discount: Mapped[Decimal | None] = mapped_column(Numeric(20, 4))
    tax: Mapped[Decimal | None] = mapped_column(Numeric(20, 4))
    total: Mapped[Decimal | None] = mapped_column(Numeric(20, 4))
    #: Fingerprint of the v3 body that created the row, to tell a retry from a conflict.
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    ledger_seq: Mapped[int | None] = mapped_column(BigInteger)
    #: The cart this purchase is an item of (its token: the id the API shows).
    cart_id: Mapped[str | None] = mapped_column(ForeignKey("carts.token"))
    #: The waitlist entry this purchase (a hold) was offered to.
    waitlist_entry_id: Mapped[int | None] = mapped_column(ForeignKey("waitlist_entries.id"))

    coupons: Mapped[list[Coupon]] = relationship(back_populates="purchase", order_by="Coupon.id", lazy="selectin")
    items: Mapped[list[PurchaseItem]] = relationship(
        back_populates="purchase", order_by="PurchaseItem.position", lazy="selectin"
    )

    __table_args__ = (
        UniqueConstraint("account_id", "transaction_id"),
        UniqueConstraint("account_id", "ledger_seq"),
        Index("ix_purchases_account_id_id", "account_id", "id"),
        Index("ix_purchases_deal_id_fulfillment_state", "deal_id", "fulfillment_state"),
        # The sweeper and the rebuild look only at live reservations, so index only those.
        partial_index(
            "ix_purchases_live_reservations", "deal_id", "reserved_until", where="fulfillment_state = 'reserved'"
        ),
        partial_index("ix_purchases_reserved_until", "reserved_until", where="fulfillment_state = 'reserved'"),
        partial_index("ix_purchases_cart_id", "cart_id", where="cart_id IS NOT NULL"),
        # Fulfilled rows not yet numbered in the ledger.
        partial_index(
            "ix_purchases_unsequenced",
            "account_id",
            "id",
            where="ledger_seq IS NULL AND fulfillment_state = 'fulfilled'",
        ),
    )


class PurchaseItem(Base):
    """A product line of a purchase (the v3 `products` array; one line for a v1 purchase)."""

    __tablename__ = "purchase_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    purchase_id: Mapped[int] = mapped_column(ForeignKey("purchases.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(String(500))
    sku: Mapped[str] = mapped_column(String(200))
    unit_price: Mapped[Decimal | None] = mapped_column(Numeric(20, 4))
    quantity: Mapped[int] = mapped_column(BigInteger)
    #: Set when the sku named one of the account's deals and the line took that deal's stock.
    deal_id: Mapped[int | None] = mapped_column(ForeignKey("deals.id"))

    purchase: Mapped[Purchase] = relationship(back_populates="items")

    __table_args__ = (partial_index("ix_purchase_items_deal_id", "deal_id", where="deal_id IS NOT NULL"),)


class Cart(Base):
    """Several deals held together, all or nothing; each item is a v1 purchase with `cart_id`.

    A cart is written `pending` (with `attempt`, the nonce of the attempt taking its holds)
    before its holds are taken, then `reserved` with its purchases in one commit; a cart left
    `pending` by a process that died is undone by the reconciler."""

    __tablename__ = "carts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token: Mapped[str] = mapped_column(String(40), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    user_id: Mapped[str | None] = mapped_column(String(200))
    #: pending | reserved | fulfilled | released | abandoned (an expired cart is reserved with
    #: reserved_until in the past).
    state: Mapped[str] = mapped_column(String(10))
    reserved_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempt: Mapped[str | None] = mapped_column(String(40))
    #: What the cart holds, as JSON: [[deal_id, units], ...] in deal order (the reconciler gives
    #: back the holds of a cart left pending from it).
    items: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_carts_account_id_id", "account_id", "id"),
        partial_index("ix_carts_pending", "created_at", where="state = 'pending'"),
    )


class WaitlistEntry(Base):
    """A customer waiting for units of a sold-out deal; units that come back are offered to the
    waiting entries in order, as holds (purchases with `waitlist_entry_id`)."""

    __tablename__ = "waitlist_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    deal_id: Mapped[int] = mapped_column(ForeignKey("deals.id"))
    user_id: Mapped[str] = mapped_column(String(200))
    #: waiting | offered | fulfilled | lapsed | left
    state: Mapped[str] = mapped_column(String(10))
    #: The offer (a reserved purchase), once made.
    purchase_token: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    offered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_waitlist_entries_deal_id_id", "deal_id", "id"),
        partial_index("uq_waitlist_entries_waiting", "deal_id", "user_id", where="state = 'waiting'", unique=True),
    )


class Coupon(Base):
    __tablename__ = "coupons"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    purchase_id: Mapped[int] = mapped_column(ForeignKey("purchases.id", ondelete="CASCADE"), index=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)

    purchase: Mapped[Purchase] = relationship(back_populates="coupons")


class IdempotencyRecord(Base):
    """The first successful response to a write sent with an Idempotency-Key.

    Written in the same transaction as the write's effect, so a key is recorded if and only if
    its effect is.
    """

    __tablename__ = "idempotency_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    __table_args__ = (UniqueConstraint("account_id", "key"),)


class Webhook(Base):
    """A URL an account wants told about some events, with how its last delivery went.

    The signing secret is kept as given out (not hashed): every delivery is signed with it.
    """

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    #: Comma-separated event names (see app/core/events.py WEBHOOK_EVENTS).
    events: Mapped[str] = mapped_column(String(200))
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The last delivery attempt, whatever its outcome.
    last_event: Mapped[str | None] = mapped_column(String(40))
    last_delivery_id: Mapped[str | None] = mapped_column(String(40))
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: HTTP status the receiver answered; None when it did not answer (or nothing was sent yet).
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Attempts that failed since the last success.
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)

    @property
    def event_list(self) -> list[str]:
        return [name for name in self.events.split(",") if name]


class StoredEvent(Base):
    """An event of the transactional outbox: written in the transaction of the change it
    describes (app/inventory/outbox.py), numbered and fanned out to webhook deliveries by the
    relay (app/webhooks/outbox.py).

    `seq` is the event's public id (`evt_<seq>`): set once, by the relay, in the order the
    events became visible committed, so that per deal it follows the order of the changes, and a
    reader paging with `seq > n` never skips an event that committed late. NULL until relayed.
    """

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    seq: Mapped[int | None] = mapped_column(BigInteger)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    deal_id: Mapped[int | None] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(40))
    #: What a receiver gets as the event's `data` (JSON text, kept as written).
    data: Mapped[str] = mapped_column(Text)
    #: The request that made the change: its id and trace context (JSON), carried to the
    #: delivery jobs (logs, traces); None outside a request.
    meta: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("uq_events_seq", "seq", unique=True),
        Index("ix_events_account_id_seq", "account_id", "seq"),
        # The relay's work list: committed events not numbered yet.
        partial_index("ix_events_unrelayed", "id", where="seq IS NULL"),
        Index("ix_events_created_at", "created_at"),
    )


class WebhookDelivery(Base):
    """One event for one webhook. A webhook's deliveries of one deal (its `lane`) go out one at a
    time, in order: only the lane's oldest pending delivery is sent, by the job holding its lease
    (`leased_by` until `lease_until`); a failed attempt's back-off is a lease nobody holds."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    #: The event's deal (0 for an event of no deal: a cart's).
    lane: Mapped[int] = mapped_column(BigInteger)
    #: pending | delivered | failed (given up, or refused)
    state: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    leased_by: Mapped[str | None] = mapped_column(String(40))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("event_id", "webhook_id"),
        partial_index("ix_webhook_deliveries_pending", "webhook_id", "lane", "id", where="state = 'pending'"),
    )
