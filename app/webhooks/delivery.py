"""One delivery attempt: POST the signed body, record the outcome on the webhook row, and raise
`DeliveryFailed` when the receiver did not take it so that RQ retries with back-off.

The exception's text names the status or the kind of network error, never the URL: failed jobs
are visible on the queue page, which is not scoped to one account.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import requests

from app.observability import metrics
from app.webhooks.addresses import NotPublic, private_address, public_only_session

from . import signing
from .service import WebhookService

log = logging.getLogger(__name__)

USER_AGENT = "OfferEngine-Webhooks/1"


class DeliveryFailed(Exception):
    """The receiver answered non-2xx or not at all (RQ retries the job)."""


def _refused(webhooks: WebhookService, webhook_id: int, event_type: str, delivery_id: str, problem: str) -> dict:
    """Not retried: the answer would be the same. Recorded, so the account sees why."""
    webhooks.record_attempt(
        webhook_id,
        event=event_type,
        delivery_id=delivery_id,
        status=None,
        error=f"refused: {problem}",
        delivered=False,
    )
    log.warning("webhook refused: not a public receiver", extra={"webhook_id": webhook_id, "problem": problem})
    return {"skipped": f"refused: {problem}"}


def deliver(
    webhooks: WebhookService,
    webhook_id: int,
    delivery_id: str,
    event_type: str,
    body: str,
    *,
    timeout: float,
    attempt: int = 1,
    request_id: str | None = None,
    shared: Any = None,
) -> dict:
    destination = webhooks.destination(webhook_id)
    if destination is None:
        log.info("webhook deleted; delivery dropped", extra={"webhook_id": webhook_id, "delivery_id": delivery_id})
        return {"skipped": "webhook deleted"}
    problem = None if webhooks.allow_private else private_address(destination.url)
    if problem:
        return _refused(webhooks, webhook_id, event_type, delivery_id, problem)
    data = body.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        signing.EVENT_HEADER: event_type,
        signing.DELIVERY_HEADER: delivery_id,
        signing.ATTEMPT_HEADER: str(attempt),
        # The delivery id is the Standard Webhooks message id: the same on every retry.
        **signing.headers(destination.secret, delivery_id, data),
    }
    if request_id:
        headers["X-Request-ID"] = request_id
    status: int | None = None
    error: str | None = None
    started = time.perf_counter()
    session = requests.Session() if webhooks.allow_private else public_only_session()
    try:
        with (
            session,
            session.post(
                destination.url,
                data=data,
                headers=headers,
                timeout=(min(3.0, timeout), timeout),
                allow_redirects=False,
                stream=True,  # the receiver's body is not read
            ) as response,
        ):
            status = response.status_code
        if not 200 <= status < 300:
            error = f"receiver answered {status}"
    except NotPublic as refusal:  # the name pointed somewhere else by the time we connected
        return _refused(webhooks, webhook_id, event_type, delivery_id, str(refusal))
    except requests.RequestException as failure:
        error = f"no answer: {type(failure).__name__}"
    delivered = error is None
    webhooks.record_attempt(
        webhook_id, event=event_type, delivery_id=delivery_id, status=status, error=error, delivered=delivered
    )
    figures = {
        "webhook_id": webhook_id,
        "delivery_id": delivery_id,
        "event": event_type,
        "attempt": attempt,
        "status": status,
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
    if shared is not None:
        metrics.count_shared(shared, "webhook_delivered" if delivered else "webhook_failed_attempts")
    if not delivered:
        log.warning("webhook attempt failed", extra={**figures, "error": error})
        raise DeliveryFailed(f"delivery {delivery_id} attempt {attempt}: {error}")
    log.info("webhook delivered", extra=figures)
    return {"status": status, "attempt": attempt}
