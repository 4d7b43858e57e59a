"""What can go wrong when changing stock. The HTTP layer maps each to a status and error code
(app/web/errors.py). The refusals every domain package shares (Unavailable, RequestInProgress,
KeyReused) are in app/core/errors.py."""

from __future__ import annotations

from app.core.errors import DomainError
from app.core.timeutil import iso


class InventoryError(DomainError):
    """Base of the inventory's errors below."""


class DealNotFound(InventoryError):
    pass


class SoldOut(InventoryError):
    def __init__(self, available: int, requested: int) -> None:
        super().__init__(f"only {max(available, 0)} left, {requested} requested")
        self.available = max(available, 0)
        self.requested = requested


class OverPurchaseLimit(InventoryError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} units per purchase")
        self.limit = limit


class OverUserLimit(InventoryError):
    def __init__(self, limit: int, already: int) -> None:
        super().__init__(f"at most {limit} units per user; this user already has {already}")
        self.limit = limit
        self.already = already


class NotStarted(InventoryError):
    """The deal's sale window has not opened yet."""

    def __init__(self, starts_at) -> None:
        super().__init__(f"the sale starts at {iso(starts_at)}")
        self.starts_at = starts_at


class SaleEnded(InventoryError):
    """The deal's sale window has closed."""

    def __init__(self, ends_at) -> None:
        super().__init__(f"the sale ended at {iso(ends_at)}")
        self.ends_at = ends_at


class UserMismatch(InventoryError):
    """The purchase was reserved for another customer."""

    def __init__(self) -> None:
        super().__init__("the purchase was reserved for another user")


class UserRequired(InventoryError):
    """A claim must name its customer when its reserve did not."""

    def __init__(self) -> None:
        super().__init__("user_id is required: the purchase was not reserved for a user")


class PriceChanged(InventoryError):
    def __init__(self, price: int) -> None:
        super().__init__(f"the price per unit is now {price}")
        self.price = price


class NotHeld(InventoryError):
    """The purchase has no live hold (it expired, was released or was claimed)."""


class NotLoaded(InventoryError):
    """The deal's live state is not in Redis (first use, flush or restart): rebuild from SQL."""

    def __init__(self, deal_id: int | None = None) -> None:
        super().__init__(f"deal {deal_id} is not loaded")
        self.deal_id = deal_id


class OfferUnrecorded(InventoryError):
    """A waitlist entry's offer ended before SQL wrote it down: SQL still has the entry waiting.
    Record the deal's offers (the entry then shows it was offered), then join again."""

    def __init__(self, entry_id: int) -> None:
        super().__init__(f"waitlist entry {entry_id} has an offer SQL does not know yet")
        self.entry_id = entry_id


class Stale(InventoryError):
    """The live state changed generation since the caller's step (a rebuild happened)."""


class Skipped(InventoryError):
    """The commit left this write out: what it would change was changed first (the purchase's
    row moved on, its token or its Idempotency-Key was already taken). Its takes were given
    back; the flow reads again and decides afresh."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class InconsistentState(InventoryError):
    """SQL describes a deal with fewer than 0 units available: the rebuild refuses to load it
    (an operator must look), and the deal answers 503 meanwhile."""

    def __init__(self, deal_id: int, available: int) -> None:
        super().__init__(f"deal {deal_id} would have {available} units available; not loaded")
        self.deal_id = deal_id
        self.available = available


class PurchaseNotFound(InventoryError):
    pass


class AlreadyClaimed(InventoryError):
    """The purchase is fulfilled (for another user, or it cannot be released any more)."""


class HoldNotActive(InventoryError):
    """Extending needs a live hold; this one expired, was released, or was claimed."""

    def __init__(self, state: str) -> None:
        super().__init__(f"the purchase is {state}, not reserved")
        self.state = state


class MaxHoldReached(InventoryError):
    def __init__(self, limit_seconds: int) -> None:
        super().__init__(f"a hold cannot last more than {limit_seconds} seconds after the reserve")
        self.limit_seconds = limit_seconds


class QuantityBelowCommitted(InventoryError):
    def __init__(self, reserved: int, sold: int) -> None:
        super().__init__(f"quantity cannot go below reserved + sold ({reserved} reserved, {sold} sold)")
        self.reserved = reserved
        self.sold = sold


class BadWindow(InventoryError):
    """A sale window that ends before it starts."""

    def __init__(self) -> None:
        super().__init__("ends_at must be after starts_at")


class SkuTaken(InventoryError):
    def __init__(self, sku: str) -> None:
        super().__init__(f"the account already has a deal with sku {sku!r}")
        self.sku = sku


class ProductSoldOut(SoldOut):
    """A v3 product line names a deal that has too few units left (the purchase took nothing)."""

    def __init__(self, available: int, requested: int, product: str) -> None:
        super().__init__(available, requested)
        self.product = product

    def __str__(self) -> str:
        return f"not enough stock for product: {self.product} (only {self.available} left, {self.requested} requested)"


class ProductRejected(InventoryError):
    """A v3 product line that cannot take its deal's stock as given (e.g. quantity 0)."""


class TransactionConflict(InventoryError):
    """The account already has this transaction_id, recorded from a different request body."""

    def __init__(self, transaction_id: str, purchase_id: int) -> None:
        super().__init__(
            f"a purchase with transaction_id {transaction_id} is already recorded (id {purchase_id})"
            " with different details"
        )
        self.transaction_id = transaction_id
        self.purchase_id = purchase_id


class CartNotFound(PurchaseNotFound):
    pass


class CartItemRefused(InventoryError):
    """An item's deal refused (sold out, not started, over the customer's limit...): the cart
    took nothing. The answer is the refusal's, naming the deal."""

    def __init__(self, deal_id: int, refusal: InventoryError) -> None:
        super().__init__(f"deal {deal_id}: {refusal}")
        self.deal_id = deal_id
        self.refusal = refusal
