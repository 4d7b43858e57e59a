"""One delivery attempt, run by the RQ job `workers.jobs.deliver_webhook` for the head of a lane
the job holds the lease of (outbox.py): POST the signed event, record the outcome on the
delivery and on the webhook row, then

* delivered (2xx), or given up (no retry left, or a receiver that is not a public address):
  the delivery is settled, and the job leases the lane's next head and enqueues its job;
* failed with a retry left: the delivery waits out its back-off, leased to nobody; the relay
  leases it again then, and a new job makes the next attempt. The job raises `DeliveryFailed`
  so that the queue page and the trace show the attempt failed (RQ itself does not retry it).

A job whose lease is gone (its delivery done, or taken over after the lease ran out) does
nothing. The exception's text names the status or the kind of network error, never the URL:
failed jobs are visible on the queue page, which is not scoped to one account.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

import orjson
import requests

from app.observability import metrics
from app.observability.logs import JOB_META_KEY
from app.store import outbox as store
from app.webhooks.addresses import NotPublic, private_address, public_only_session

from . import signing
from .outbox import QUEUED_LEASE_SECONDS, Outbox, event_body, message_id, new_owner
from .service import WebhookService

log = logging.getLogger(__name__)

USER_AGENT = "OfferEngine-Webhooks/1"


class DeliveryFailed(Exception):
    """The receiver answered non-2xx or not at all (the relay retries after the back-off)."""


def deliver(outbox: Outbox, webhooks: WebhookService, delivery_id: int, owner: str, *, shared: Any = None) -> dict:
    """One attempt at delivery `delivery_id`, if `owner` still holds it."""
    retry = outbox.retry
    now = outbox.clock()
    with outbox.db.begin() as connection:
        attempt = store.take(connection, delivery_id, owner, now + timedelta(seconds=retry.lease_seconds))
    if attempt is None:
        log.info("webhook delivery no longer this job's", extra={"delivery": delivery_id})
        return {"skipped": "not leased to this job"}
    dlv = message_id(attempt.seq, attempt.webhook_id)
    meta = orjson.loads(attempt.meta) if attempt.meta else {}
    problem = None if webhooks.allow_private else private_address(attempt.url)
    status: int | None = None
    error: str | None = None
    started = time.perf_counter()
    if problem is None:
        status, error, problem = _post(
            attempt, dlv, meta.get(JOB_META_KEY), retry.timeout_seconds, webhooks.allow_private
        )
    if problem is not None:
        error = f"refused: {problem}"  # not retried: the answer would be the same
        log.warning(
            "webhook refused: not a public receiver", extra={"webhook_id": attempt.webhook_id, "problem": problem}
        )
    delivered = error is None
    wait = None if delivered or problem is not None else retry.back_off(attempt.attempt)
    following = _record(outbox, webhooks, attempt, owner, dlv, status, error, wait)
    figures = {
        "webhook_id": attempt.webhook_id,
        "delivery_id": dlv,
        "event": attempt.type,
        "attempt": attempt.attempt,
        "status": status,
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
    if shared is not None and problem is None:
        metrics.count_shared(shared, "webhook_delivered" if delivered else "webhook_failed_attempts")
    if following is not None:
        outbox.enqueue([following[0]], following[1])
    if problem is not None:
        return {"skipped": f"refused: {problem}"}
    if not delivered:
        log.warning("webhook attempt failed", extra={**figures, "error": error, "retry_in": wait})
        raise DeliveryFailed(f"delivery {dlv} attempt {attempt.attempt}: {error}")
    log.info("webhook delivered", extra=figures)
    return {"status": status, "attempt": attempt.attempt}


def _post(
    attempt: store.Attempt, dlv: str, request_id: str | None, timeout: float, allow_private: bool
) -> tuple[int | None, str | None, str | None]:
    """(status, error, refusal) of one POST."""
    data = event_body(attempt.seq, attempt.type, attempt.created_at, attempt.data).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        signing.EVENT_HEADER: attempt.type,
        signing.DELIVERY_HEADER: dlv,
        signing.ATTEMPT_HEADER: str(attempt.attempt),
        # The Standard Webhooks message id: the same for every attempt of this event to this
        # webhook, whoever sends it.
        **signing.headers(attempt.secret, dlv, data),
    }
    if request_id:
        headers["X-Request-ID"] = request_id
    session = requests.Session() if allow_private else public_only_session()
    try:
        with (
            session,
            session.post(
                attempt.url,
                data=data,
                headers=headers,
                timeout=(min(3.0, timeout), timeout),
                allow_redirects=False,
                stream=True,  # the receiver's body is not read
            ) as response,
        ):
            status = response.status_code
    except NotPublic as refusal:  # the name pointed somewhere else by the time we connected
        return None, None, str(refusal)
    except requests.RequestException as failure:
        return None, f"no answer: {type(failure).__name__}", None
    return status, None if 200 <= status < 300 else f"receiver answered {status}", None


def _record(
    outbox: Outbox,
    webhooks: WebhookService,
    attempt: store.Attempt,
    owner: str,
    dlv: str,
    status: int | None,
    error: str | None,
    wait: int | None,
) -> tuple[store.Claimed, str] | None:
    """The attempt's outcome, in one transaction; returns the lane's next head when this job
    leased it (with its owner), to be enqueued."""
    now: datetime = outbox.clock()
    following = None
    with outbox.db.begin() as connection:
        if error is not None and wait is not None:
            store.back_off(connection, attempt.delivery_id, owner, now + timedelta(seconds=wait))
        else:
            store.settle(connection, attempt.delivery_id, "delivered" if error is None else "failed")
            successor = new_owner()
            until = now + timedelta(seconds=max(QUEUED_LEASE_SECONDS, outbox.retry.lease_seconds))
            head = store.claim_next(connection, attempt.webhook_id, attempt.lane, now, until, successor)
            following = None if head is None else (head, successor)
        webhooks.record_attempt(
            attempt.webhook_id,
            event=attempt.type,
            delivery_id=dlv,
            status=status,
            error=error,
            delivered=error is None,
            at=now,
            connection=connection,
        )
    if error is not None and wait is None:
        log.warning(
            "webhook delivery given up", extra={"delivery_id": dlv, "attempts": attempt.attempt, "error": error}
        )
    return following
