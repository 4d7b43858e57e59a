"""The relay: from the outbox's event rows to webhook deliveries, and the event feed
(`GET /v1/events`).

Events are rows written in the transaction of the change they describe (app/inventory/outbox.py).
The worker runs `relay()` every RELAY_INTERVAL_MS (workers/__main__.py); one round, in one
transaction:

1. takes the relay's lock without waiting (PostgreSQL advisory lock; on SQLite the write
   transaction): with several workers, one relays and the others find it taken and skip;
2. numbers the committed events not numbered yet, in the order of their rows: the number is
   the event's id, `evt_<seq>`. An event that commits late (its transaction began first) gets
   the next number when it shows up, so numbers follow the order events became visible, which
   keeps every deal's changes in their order (a change that depends on another one began
   after that one committed), and a reader that paged past `evt_n` never misses one below it;
3. fans each event out to the webhooks of its account that subscribe to its type: one pending
   delivery each, in a lane per (webhook, deal);
4. leases the head (oldest pending delivery) of each lane that nobody holds, and after the
   commit enqueues one RQ job per head (`workers.jobs.deliver_webhook`, delivery.py).

A lane sends one delivery at a time, in order: a delivered head's job leases the next head and
enqueues it itself (no wait for the next round); a failed attempt leaves the head to the relay
after its back-off. A job that dies (its worker killed, its queue's Redis lost) only lets its
lease run out: the relay leases the head again and sends it again. So every event is delivered
at least once, in order per deal and webhook, with the same `webhook-id` (`dlv_<seq>_<webhook
id>`) and body on every attempt; a receiver deduplicates on `webhook-id`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from app.core.jsonutil import dumps
from app.core.timeutil import iso
from app.observability import metrics
from app.store import outbox as store
from app.store.db import Database
from app.store.models import utcnow
from app.store.queue import LazyQueue

from .dispatch import RetryPolicy

log = logging.getLogger(__name__)

#: The RQ job that delivers (workers/jobs.py); named by path so the domain never imports workers.
DELIVERY_JOB = "workers.jobs.deliver_webhook"
#: Events a relay round numbers at most; lanes whose heads it leases at most.
RELAY_BATCH = 1000
LANES_PER_ROUND = 1000
#: A head leased for a job that is still waiting on the queue: how long before the relay takes
#: it for lost (a queue this far behind gets a second job for it, which does nothing if the
#: first one ran by then).
QUEUED_LEASE_SECONDS = 60
#: A head whose job could not be enqueued (the queue's Redis did not answer) is offered again
#: this much later.
ENQUEUE_RETRY_SECONDS = 1
#: /v1/events page size.
PAGE_SIZE = 50
EVENT_ID_PREFIX = "evt_"


def event_id(seq: int) -> str:
    return f"{EVENT_ID_PREFIX}{seq}"


def message_id(seq: int, webhook_id: int) -> str:
    """The Standard Webhooks `webhook-id` of event `seq` sent to webhook `webhook_id`: the same on
    every attempt, from any relay, so a receiver deduplicates on it."""
    return f"dlv_{seq}_{webhook_id}"


def event_body(seq: int, kind: str, created_at: datetime, data: str) -> str:
    """The event as a receiver gets it, webhook body and /v1/events item alike:
    `{"id", "type", "created_at", "data"}`, with `data` exactly as stored (the same bytes on
    every attempt)."""
    return f'{{"id":"{event_id(seq)}","type":{dumps(kind)},"created_at":{dumps(iso(created_at))},"data":{data}}}'


def new_owner() -> str:
    """Names one lease: only the job given it may send the delivery."""
    return secrets.token_hex(8)


@dataclass
class RelayReport:
    #: Another relay held the lock: this round did nothing.
    busy: bool = False
    relayed: int = 0
    deliveries: int = 0
    enqueued: int = 0
    #: Enqueued per event type.
    by_type: Counter = field(default_factory=Counter)


@dataclass(eq=False)
class Outbox:
    db: Database
    queue: LazyQueue
    retry: RetryPolicy
    figures: Any
    _: KW_ONLY
    retention_days: int = 30
    batch: int = RELAY_BATCH
    clock: Callable[[], datetime] = utcnow
    _published: float = field(default=0.0, init=False)

    # -- the relay ------------------------------------------------------------------------------

    def relay(self, now: datetime | None = None) -> RelayReport:
        """One round (see the module docstring)."""
        now = now or self.clock()
        with self.db.reading() as connection:
            if not store.has_work(connection, now):
                self._publish(RelayReport())
                return RelayReport()
        owner = new_owner()
        report = RelayReport()
        with self.db.begin() as connection:
            if not store.relay_lock(connection):
                return RelayReport(busy=True)
            events = store.unrelayed(connection, self.batch)
            report.relayed = len(events)
            report.deliveries = self._fan_out(connection, events, now)
            until = now + timedelta(seconds=max(QUEUED_LEASE_SECONDS, self.retry.lease_seconds))
            claimed = store.claim_heads(connection, now, until, owner, LANES_PER_ROUND)
        report.enqueued = self.enqueue(claimed, owner, report.by_type)
        self._publish(report)
        if report.relayed or report.enqueued:
            log.info(
                "relay",
                extra={"events": report.relayed, "deliveries": report.deliveries, "enqueued": report.enqueued},
            )
        return report

    def _fan_out(self, connection, events: Sequence, now: datetime) -> int:
        """Number `events` and make their deliveries; returns how many deliveries."""
        if not events:
            return 0
        first = store.last_seq(connection) + 1
        store.number(connection, [(event.id, first + at) for at, event in enumerate(events)])
        subscribed: dict[int, list[tuple[int, frozenset[str]]]] = defaultdict(list)
        for webhook_id, account_id, kinds in store.subscriptions(connection, [e.account_id for e in events]):
            subscribed[account_id].append((webhook_id, frozenset(kinds.split(","))))
        deliveries = [
            (event.id, webhook_id, event.deal_id or 0)
            for event in events
            for webhook_id, kinds in subscribed.get(event.account_id, ())
            if event.type in kinds
        ]
        store.insert_deliveries(connection, deliveries, now)
        return len(deliveries)

    def enqueue(self, claimed: Sequence[store.Claimed], owner: str, by_type: Counter | None = None) -> int:
        """One delivery job per leased head, carrying its event's request id and trace context.
        When the queue does not answer, the heads not enqueued are offered again a moment later
        (their leases given back); returns how many were enqueued."""
        enqueued = 0
        for at, head in enumerate(claimed):
            try:
                self.queue.get().enqueue(
                    DELIVERY_JOB,
                    head.delivery_id,
                    owner,
                    job_id=f"webhook-{head.delivery_id}-{owner}",
                    # What the queue page shows instead of the call: ids only.
                    description=f"webhook {head.webhook_id} {head.type} {message_id(head.seq, head.webhook_id)}",
                    meta=orjson.loads(head.meta) if head.meta else {},
                    job_timeout=self.retry.lease_seconds,
                    result_ttl=3600,
                    failure_ttl=24 * 3600,
                )
            except self.queue.Failed as error:
                log.warning(
                    "the queue does not answer; deliveries offered again soon", extra={"error": str(error)[:200]}
                )
                retry_at = self.clock() + timedelta(seconds=ENQUEUE_RETRY_SECONDS)
                with self.db.begin() as connection:
                    store.release(connection, [h.delivery_id for h in claimed[at:]], owner, retry_at)
                break
            enqueued += 1
            if by_type is not None:
                by_type[head.type] += 1
        return enqueued

    def _publish(self, report: RelayReport) -> None:
        """The relay's figures for /metrics; the last round's time at most once a second."""
        counts = {"events_relayed": report.relayed} if report.relayed else {}
        counts |= {f"webhook_enqueued:{kind}": n for kind, n in report.by_type.items()}
        latest = {}
        if time.monotonic() - self._published >= 1.0:
            self._published = time.monotonic()
            latest["relay_last_finished"] = repr(time.time())
        if counts or latest:
            metrics.publish_counts(self.figures, counts, latest)

    # -- reads and upkeep -------------------------------------------------------------------------

    def page(self, account_id: int, after: int = 0, limit: int = PAGE_SIZE) -> tuple[list[str], bool]:
        """The account's events numbered after `after`, oldest first, as their JSON bodies, and
        whether more follow. Only relayed events are listed: their numbers are final."""
        with self.db.reading() as connection:
            rows = store.page(connection, account_id, after, limit + 1)
        return [event_body(*row) for row in rows[:limit]], len(rows) > limit

    def purge(self, now: datetime | None = None) -> int:
        """Forget events (and their deliveries) older than the retention period."""
        cutoff = (now or self.clock()) - timedelta(days=self.retention_days)
        return store.purge(self.db, cutoff)
