"""The outbox half of a write: the events of the changes a transaction applies, as the rows the
same transaction inserts (app/store/outbox.py), so an event exists if and only if its change
committed (docs/consistency.md, "The outbox").

The group committer writes the events of the writes it applied (`Write.events()`, writes.py)
and a `deal.sold_out` for each of their takes that left its deal with nothing available; the
sweep writes the expiries of the rows it expires. What a receiver gets as an event's `data` is
decided here, once, when the event is written: the relay and `GET /v1/events` send the stored
text as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from app.core import events as ev
from app.core.jsonutil import dumps
from app.store.outbox import EventRow

from .stock import Taken


def sold_out(takes: Sequence[Taken]) -> list[ev.Event]:
    """A take that left its deal with nothing available sold it out (once per sell-out: only the
    take that moved `available` to 0 sees 0 after it)."""
    return [ev.Event(ev.DEAL_SOLD_OUT, take.account_id, take.deal_id) for take in takes if take.available_after == 0]


def rows(events: Iterable[ev.Event], at: datetime, meta: dict | None) -> list[EventRow]:
    """The rows of `events`, made at `at` by the request whose `meta` (request id, trace
    context; app/observability/logs.py `job_meta`) their delivery jobs will carry."""
    carried = dumps(meta) if meta else None
    return [EventRow(e.account_id, e.deal_id, e.type, dumps(data(e)), carried, at) for e in events]


def data(event: ev.Event) -> dict[str, Any]:
    """An event's `data`: the purchase, the cart or the deal it is about, as the v1 API shows
    them, in the state the change left them in."""
    # serializers.py imports purchases.py, which imports the committer that imports this module.
    from .serializers import cart_json, purchase_json

    shown: dict[str, Any] = {}
    if event.purchase is not None:
        purchase = event.purchase
        shown["purchase"] = purchase_json(purchase, _as_of(purchase, purchase.reserved_at))
        if event.via:
            shown["via"] = event.via
    elif event.cart is not None:
        shown["cart"] = cart_json(event.cart, _as_of(event.cart, event.cart.created_at))
    elif event.type == ev.DEAL_SOLD_OUT:
        shown["deal"] = {"id": event.deal_id, "available": 0}
    shown.update(event.details or {})
    if not shown:
        raise ValueError(f"the event {event.type!r} has no data: give it a purchase, a cart or details")
    return shown


def _as_of(thing, reserved_at: datetime | None) -> datetime | None:
    """The instant to show a reserved purchase or cart at: when it was reserved, so that its
    event says `reserved` however late it is serialised (a hold made in the past, in tests, or a
    batch that waited); None (now) for the other states, which do not depend on the clock."""
    state = getattr(thing, "fulfillment_state", None) or getattr(thing, "state", None)
    return reserved_at if state == "reserved" else None
