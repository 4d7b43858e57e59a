"""The event sink: what the services' `emit` does in the web app and the worker.

For every event it bumps a counter (an in-memory increment, or for expiries one HINCRBY per
batch). For webhook events it looks up the account's webhooks in a per-process cache (SQL at
most once per account every few seconds) and, only when one subscribes to the event, builds
the payload and enqueues one RQ delivery job per matching webhook. An account without
webhooks therefore costs a dictionary lookup per event.

When the queue's Redis does not answer (RQ_REDIS_URL may be a different server from the
stock's, so sales can go on without it), the deliveries are held in this process and enqueued
by a background thread once it answers again, in order, up to `MAX_HELD` of them. They are lost
only if the process exits first (or more pile up than that).
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from app.core import events as ev
from app.core.jsonutil import dumps
from app.core.timeutil import iso
from app.inventory.serializers import purchase_json
from app.inventory.stock import REDIS_DOWN
from app.observability import metrics
from app.observability.logs import job_meta
from app.store.db import Database
from app.store.models import Purchase, utcnow
from app.store.queue import LazyQueue

from .service import Target, WebhookService

log = logging.getLogger(__name__)

#: The RQ job that delivers (workers/jobs.py); named by path so the web app never imports workers.
DELIVERY_JOB = "workers.jobs.deliver_webhook"
#: No back-off grows past this.
MAX_INTERVAL_SECONDS = 3600
TOKEN_BATCH = 500
#: Deliveries held per process while the queue's Redis does not answer (the oldest go first).
MAX_HELD = 10_000
#: How often the held deliveries are offered to the queue again.
HELD_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 6
    base_seconds: int = 10
    timeout_seconds: int = 10

    def intervals(self) -> list[int]:
        """Exponential back-off: base, 2 x base, 4 x base, ... (capped)."""
        return [min(self.base_seconds * 2**i, MAX_INTERVAL_SECONDS) for i in range(self.max_retries)]


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


def new_delivery_id() -> str:
    return "dlv_" + secrets.token_hex(12)


def payload(event: ev.Event, event_id: str, now: datetime) -> str:
    """The JSON body sent for `event` (the same bytes on every attempt: it is in the job)."""
    if event.purchase is not None:
        data: dict[str, Any] = {"purchase": purchase_json(event.purchase)}
    else:
        data = {"deal": {"id": event.deal_id, "available": 0}}
    return dumps({"id": event_id, "type": event.type, "created_at": iso(now), "data": data})


class EventSink:
    def __init__(
        self, *, db: Database, shared: Any, webhooks: WebhookService, queue: LazyQueue, retry: RetryPolicy
    ) -> None:
        self.db = db
        #: Where counts made outside the web processes go (app/store/figures.py).
        self.shared = shared
        self.webhooks = webhooks
        self.queue = queue
        self.retry = retry
        #: Deliveries (enqueue arguments) the queue did not take yet, oldest first.
        self._held: deque[dict[str, Any]] = deque()
        self._held_lock = threading.Lock()
        self._retrier_pid: int | None = None  # threads do not survive fork: one per process

    def emit(self, *events: ev.Event) -> None:
        self._count(events)
        deliverable = [event for event in events if event.type in ev.WEBHOOK_EVENTS]
        if not deliverable:
            return
        anonymous = [event for event in deliverable if event.account_id is None]
        if anonymous:
            deliverable = [event for event in deliverable if event.account_id is not None]
            deliverable += self._resolve(anonymous)
        now = utcnow()
        for event in deliverable:
            matching = [t for t in self.webhooks.targets(event.account_id) if event.type in t.events]
            if matching:
                self._enqueue(event, matching, now)

    # -- counting ---------------------------------------------------------------------------------

    @staticmethod
    def _counter(event: ev.Event):
        if event.type == ev.PURCHASE_RESERVED:
            return metrics.RESERVATIONS
        if event.type == ev.PURCHASE_FULFILLED:
            return metrics.CLAIMS if event.via == "claim" else metrics.DIRECT_PURCHASES
        if event.type == ev.PURCHASE_RELEASED:
            return metrics.RELEASES
        if event.type == ev.DEAL_SOLD_OUT:
            return metrics.SOLD_OUTS
        return None

    def _count(self, events: Sequence[ev.Event]) -> None:
        expired = 0
        for event in events:
            if event.type == ev.PURCHASE_EXPIRED:
                expired += 1
                continue
            counter = self._counter(event)
            if counter is not None:
                counter.inc()
        if expired:
            # Expiries happen mostly in the worker, whose counters nobody scrapes: count in Redis.
            metrics.count_shared(self.shared, "expiries", expired)

    # -- webhooks ---------------------------------------------------------------------------------

    def _resolve(self, events: list[ev.Event]) -> list[ev.Event]:
        """Events the sweep emitted know only the purchase token: find each purchase's account,
        and load the rows of the accounts that subscribe to expiries (the others cost nothing
        but the first, narrow query)."""
        tokens = [event.token for event in events if event.token]
        resolved: list[ev.Event] = []
        for start in range(0, len(tokens), TOKEN_BATCH):
            batch = tokens[start : start + TOKEN_BATCH]
            with self.db.read() as session:
                owners = session.execute(
                    select(Purchase.token, Purchase.account_id).where(Purchase.token.in_(batch))
                ).all()
                wanted = [
                    token
                    for token, account_id in owners
                    if any(ev.PURCHASE_EXPIRED in t.events for t in self.webhooks.targets(account_id))
                ]
                if not wanted:
                    continue
                rows = session.scalars(select(Purchase).where(Purchase.token.in_(wanted))).all()
            resolved += [
                ev.Event(ev.PURCHASE_EXPIRED, row.account_id, row.deal_id, purchase=row, token=row.token)
                for row in rows
            ]
        return resolved

    def _enqueue(self, event: ev.Event, targets: list[Target], now: datetime) -> None:
        event_id = new_event_id()
        body = payload(event, event_id, now)
        deliveries = []
        for target in targets:
            delivery_id = new_delivery_id()
            deliveries.append(
                {
                    "args": (DELIVERY_JOB, target.id, delivery_id, event.type, body),
                    "job_id": delivery_id,
                    # What the queue page shows instead of the call (whose arguments hold the
                    # account's data): ids only.
                    "description": f"webhook {target.id} {event.type} {delivery_id}",
                    "meta": job_meta(),
                }
            )
        with self._held_lock:
            if self._held:  # keep the order: these go after the ones already waiting
                self._hold(deliveries)
                return
        for sent, delivery in enumerate(deliveries):
            if not self._offer(delivery):
                with self._held_lock:
                    self._hold(deliveries[sent:])
                return

    @functools.cached_property
    def _job_retry(self) -> Any:
        """RQ's retry settings for every delivery job (the policy never changes)."""
        from rq import Retry

        return Retry(max=self.retry.max_retries, interval=self.retry.intervals()) if self.retry.max_retries else None

    def _offer(self, delivery: dict[str, Any]) -> bool:
        """Enqueue one delivery; False when the queue's Redis does not answer (try again later).
        Any other failure is logged and the delivery dropped: retrying would not help."""
        try:
            self.queue.get().enqueue(
                *delivery["args"],
                job_id=delivery["job_id"],
                description=delivery["description"],
                retry=self._job_retry,
                meta=delivery["meta"],
                job_timeout=self.retry.timeout_seconds * 2 + 5,
                result_ttl=24 * 3600,
                failure_ttl=7 * 24 * 3600,
            )
        except REDIS_DOWN as error:
            log.warning("the queue's Redis does not answer; webhook deliveries held", extra={"error": str(error)[:200]})
            return False
        except Exception:
            log.exception("could not enqueue a webhook delivery", extra={"job": delivery["job_id"]})
        else:
            metrics.WEBHOOKS_ENQUEUED.labels(delivery["args"][3]).inc()
        return True

    def _hold(self, deliveries: list[dict[str, Any]]) -> None:
        """Called with `_held_lock` held."""
        for delivery in deliveries:
            if len(self._held) >= MAX_HELD:
                dropped = self._held.popleft()
                metrics.WEBHOOKS_HELD_DROPPED.inc()
                log.error("too many webhook deliveries held; the oldest is dropped", extra={"job": dropped["job_id"]})
            self._held.append(delivery)
            metrics.WEBHOOKS_HELD.inc()
        if self._retrier_pid != os.getpid():
            self._retrier_pid = os.getpid()
            threading.Thread(target=self._retry_held, name="webhook-held", daemon=True).start()

    def _retry_held(self) -> None:
        """Every HELD_RETRY_SECONDS, offers the held deliveries to the queue, oldest first, until
        one is refused; ends when none is left (the next hold starts it again)."""
        while True:
            time.sleep(HELD_RETRY_SECONDS)
            while True:
                with self._held_lock:
                    if not self._held:
                        self._retrier_pid = None
                        return
                    oldest = self._held[0]
                if not self._offer(oldest):
                    break
                with self._held_lock:
                    if self._held and self._held[0] is oldest:  # (unless MAX_HELD pushed it out)
                        self._held.popleft()

    def held(self) -> int:
        """Deliveries waiting for the queue's Redis in this process."""
        with self._held_lock:
            return len(self._held)
