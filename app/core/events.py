"""What the domain tells the rest of the system about a change: its events.

Two paths, for two needs:

* **The outbox (delivery).** An event a receiver must get is written as a row of the `events`
  table in the same SQL transaction as the change it describes: the group committer asks each
  write it applied for its events (`Write.events()`, app/inventory/writes.py) and inserts them
  with the batch; the sweep writes the expiries of the rows it expires. The worker's relay
  (app/webhooks/outbox.py) numbers them and turns them into webhook deliveries. A process
  killed after its commit loses nothing: the rows committed with the change.
* **The counters (metrics).** After their commit the services call `events.emit(...)` with
  the same events, and the sink (`app.webhooks.dispatch.EventSink` in the web app and the
  worker) bumps the counters /metrics shows. Counting is not delivery: an emit lost with a
  killed process costs a count, never an event. `NullEvents` is the default, so a service built
  without a sink (unit tests, scripts) works unchanged. Emitting must stay cheap: it runs on the
  request's thread, right after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

PURCHASE_RESERVED = "purchase.reserved"
PURCHASE_FULFILLED = "purchase.fulfilled"
PURCHASE_RELEASED = "purchase.released"
PURCHASE_EXPIRED = "purchase.expired"
DEAL_SOLD_OUT = "deal.sold_out"
CART_RESERVED = "cart.reserved"
CART_FULFILLED = "cart.fulfilled"
CART_RELEASED = "cart.released"
WAITLIST_OFFERED = "waitlist.offered"

#: Events a webhook can subscribe to (every event the outbox writes).
WEBHOOK_EVENTS = (
    PURCHASE_RESERVED,
    PURCHASE_FULFILLED,
    PURCHASE_RELEASED,
    PURCHASE_EXPIRED,
    DEAL_SOLD_OUT,
    CART_RESERVED,
    CART_FULFILLED,
    CART_RELEASED,
    WAITLIST_OFFERED,
)


@dataclass(frozen=True)
class Event:
    type: str
    account_id: int | None
    deal_id: int | None = None
    #: The purchase as committed (a `PurchaseRecord` or `Purchase` row), when the event is about one.
    purchase: Any = None
    #: The purchase token, when the emitter has no row.
    token: str | None = None
    #: How a purchase got fulfilled: "claim" or "create".
    via: str | None = None
    #: The cart as committed (a `CartRecord`), for the cart events.
    cart: Any = None
    #: More of the event's `data` (JSON-ready), beside the purchase, cart or deal it is about
    #: (app/inventory/outbox.py `data`); an event about none of them gives all of it here.
    details: dict[str, Any] | None = None


class Events(Protocol):
    def emit(self, *events: Event) -> None: ...


class NullEvents:
    """Drops every event."""

    def emit(self, *events: Event) -> None:
        return None


NULL_EVENTS = NullEvents()
