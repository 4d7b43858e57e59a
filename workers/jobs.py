"""RQ jobs. Each builds nothing itself: it calls a service method and reports what it did."""

from __future__ import annotations

import logging

from app.observability import metrics
from app.wiring import Services

log = logging.getLogger("workers.jobs")

#: Set by the worker process at start-up (workers/__main__.py); built from the environment
#: when a job runs anywhere else.
SERVICES: Services | None = None


def services() -> Services:
    global SERVICES
    if SERVICES is None:
        from config import load_settings

        SERVICES = Services.from_config(load_settings().flask_config())
    return SERVICES


def sweep() -> dict:
    """Return ended holds to stock (to waiting customers first, whose offers are then written
    down) and mark their reservations expired; then number the new purchases of the v3 ledger,
    so that a page read finds them numbered and writes nothing."""
    svc = services()
    report = svc.sweeper.sweep()
    metrics.publish_sweep(svc.figures, report)
    try:
        offers = svc.waitlist.record_all()  # units the sweep returned went to waiting customers
    except Exception:  # the next sweep records what this could not
        log.exception("recording waitlist offers failed")
        offers = 0
    try:
        sealed = svc.ledger.seal_pending()
    except Exception:  # a read seals what this could not
        log.exception("sealing the ledger failed")
        sealed = 0
    if report.holds or report.expired_records or sealed or offers:
        log.info(
            "sweep",
            extra={
                "deals": report.deals,
                "holds": report.holds,
                "units": report.units,
                "records_expired": len(report.expired_records),
                "seconds": round(report.seconds, 4),
                "lag_seconds": round(report.lag_seconds, 3),
                "ledger_sealed": sealed,
                "waitlist_offers": offers,
            },
        )
    return {
        "holds": report.holds,
        "units": report.units,
        "records": len(report.expired_records),
        "sealed": sealed,
        "offers": offers,
    }


def maintain() -> dict:
    """Less frequent upkeep: re-index every deal with holds (covers a process killed between
    its reserve and its index write), give up carts left pending by dead attempts, drop the marks
    of committed purchases, repair drift between Redis and SQL, forget Idempotency-Key answers
    past their retention period (all of them, in batches: the table stays as large as the
    writes of one period)."""
    svc = services()
    indexed = svc.stock.repair_index()
    abandoned = svc.carts.abandon_stale()
    repaired = []
    for deal_id in svc.stock.loaded_deals():
        try:
            svc.rebuilder.forget_committed_marks(deal_id)
            if svc.rebuilder.repair(deal_id):
                repaired.append(deal_id)
        except Exception:
            log.exception("reconcile failed", extra={"deal_id": deal_id})
    purged = svc.kept.purge()
    forgotten = svc.outbox.purge()  # events past EVENT_RETENTION_DAYS
    if repaired or purged or abandoned or forgotten:
        log.info(
            "maintenance",
            extra={
                "repaired_deals": repaired,
                "purged_keys": purged,
                "abandoned_carts": abandoned,
                "events_forgotten": forgotten,
            },
        )
    return {
        "indexed": indexed,
        "repaired": repaired,
        "purged": purged,
        "abandoned_carts": abandoned,
        "events_forgotten": forgotten,
    }


def deliver_webhook(delivery_id: int, owner: str) -> dict:
    """One attempt at a webhook delivery, if this job (`owner`) still holds its lease; raising
    marks the attempt failed (the relay retries it after its back-off, with a new job)."""
    from app.webhooks.delivery import deliver

    svc = services()
    return deliver(svc.outbox, svc.webhooks, delivery_id, owner, shared=svc.figures)


def relay() -> dict:
    """One round of the outbox's relay (the worker runs it in a loop, beside the RQ worker)."""
    outbox = services().outbox
    report = outbox.relay()
    return {
        "busy": report.busy,
        "events": report.relayed,
        "deliveries": report.deliveries,
        "enqueued": report.enqueued,
        "full": report.relayed >= outbox.batch,
    }
