"""What the domain tells the rest of the system after a change has committed.

The services call `events.emit(...)` only after their SQL commit, so an event never describes
something that did not happen. Delivery is at most once per emit: a process killed between the
commit and the emit loses the event (an outbox table would close that gap; see the README). A
queue that does not answer does not lose it: the sink holds it until the queue answers again
(app/webhooks/dispatch.py).

`NullEvents` is the default, so a service built without a sink (unit tests, scripts) works
unchanged. The web app and the worker use `app.webhooks.dispatch.EventSink`, which counts the
events for /metrics and enqueues webhook deliveries for the accounts that registered one.
Emitting must stay cheap: it runs on the request's thread, right after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

#: Events a webhook can subscribe to.
PURCHASE_FULFILLED = "purchase.fulfilled"
PURCHASE_RELEASED = "purchase.released"
PURCHASE_EXPIRED = "purchase.expired"
DEAL_SOLD_OUT = "deal.sold_out"
WEBHOOK_EVENTS = (PURCHASE_FULFILLED, PURCHASE_RELEASED, PURCHASE_EXPIRED, DEAL_SOLD_OUT)

#: Internal only (metrics): a hold was made.
PURCHASE_RESERVED = "purchase.reserved"


@dataclass(frozen=True)
class Event:
    type: str
    #: None when the emitter does not know it (the sweep knows tokens, not accounts).
    account_id: int | None
    deal_id: int | None = None
    #: The purchase as committed (a `Purchase` row), when the event is about one.
    purchase: Any = None
    #: The purchase token, when the emitter has no row (the sweep).
    token: str | None = None
    #: How a purchase got fulfilled: "claim" or "create".
    via: str | None = None


class Events(Protocol):
    def emit(self, *events: Event) -> None: ...


class NullEvents:
    """Drops every event."""

    def emit(self, *events: Event) -> None:
        return None


NULL_EVENTS = NullEvents()
