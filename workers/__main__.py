"""`python -m workers`: an RQ worker that also enqueues the periodic sweep.

A ticker thread claims each SWEEP_INTERVAL_SECONDS time slot with SET NX, so with several
worker processes the sweep is enqueued once per slot; whichever worker is free runs it. The
sweep itself is safe to run twice at once, so a lost slot key costs nothing but work.

A relay thread runs the outbox's relay every RELAY_INTERVAL_MS (app/webhooks/outbox.py): it
numbers the events committed since its last round, fans them out to webhook deliveries and
enqueues the delivery jobs of the lanes ready to send. Every worker runs one; they take turns on
the relay's lock, so any of them may die without stopping the relay.

The worker also runs RQ's scheduler (one per queue across all workers, by RQ's own lock). Each
job runs with the request id of the request that caused it (from the job's meta) in its log
lines.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from rq import SimpleWorker

from app.observability import logs, telemetry
from app.observability.logs import configure_logging
from app.wiring import Services
from config import load_settings
from workers import jobs

log = logging.getLogger("workers")


class Worker(SimpleWorker):
    """Runs each job in this process (no fork per job), with its request id in the log context
    and, when OpenTelemetry traces are on, in a span continuing the trace of the request that
    enqueued it (app/observability/telemetry.py)."""

    def execute_job(self, job, queue):
        token = logs.request_id.set(job.meta.get(logs.JOB_META_KEY) if job.meta else None)
        try:
            with telemetry.job_span(job):
                return super().execute_job(job, queue)
        finally:
            logs.request_id.reset(token)


def ticker(queue: Any, config: dict, stop: threading.Event) -> None:
    """Enqueue the sweep once per SWEEP_INTERVAL_SECONDS slot, and the maintenance once per
    RECONCILE_INTERVAL_SECONDS slot, across every worker process (`queue`: the services' queue)."""
    interval = config["SWEEP_INTERVAL_SECONDS"]
    every = config["RECONCILE_INTERVAL_SECONDS"]
    last_maintenance = 0.0
    while not stop.is_set():
        now = time.time()
        slot = int(now // interval)
        try:
            if queue.claim_slot("sweep", slot, interval * 3):
                queue.get().enqueue(
                    jobs.sweep,
                    job_id=f"sweep-{slot}",
                    result_ttl=60,
                    failure_ttl=3600,
                    job_timeout=max(interval * 6, 60),
                )
            if now - last_maintenance >= every:
                mslot = int(now // every)
                if queue.claim_slot("maintenance", mslot, every * 3):
                    queue.get().enqueue(
                        jobs.maintain,
                        job_id=f"maintain-{mslot}",
                        result_ttl=60,
                        failure_ttl=3600,
                        job_timeout=600,
                    )
                last_maintenance = now
        except queue.Failed as error:
            log.warning("cannot enqueue the sweep; retrying", extra={"error": str(error)})
        stop.wait(interval - (time.time() % interval))


def relay_loop(relay: Any, interval: float, stop: threading.Event) -> None:
    """Run relay rounds until `stop`: back to back while they find a full batch, else every
    `interval` seconds; a failed round (SQL or the queue down) is logged and tried again."""
    while not stop.is_set():
        try:
            report = relay()
        except Exception as error:
            log.warning("relay round failed; retrying", extra={"error": str(error)[:300]})
            stop.wait(max(interval, 1.0))
            continue
        if not report["full"]:
            stop.wait(interval)


def main() -> None:
    configure_logging("worker")
    config = load_settings().flask_config()
    services = jobs.SERVICES = Services.from_config(config)
    telemetry.init_worker(services, config)
    queue = services.queue
    stop = threading.Event()
    thread = threading.Thread(
        target=ticker,
        args=(queue, config, stop),
        name="sweep-ticker",
        daemon=True,
    )
    thread.start()
    relay = threading.Thread(
        target=relay_loop,
        args=(jobs.relay, config["RELAY_INTERVAL_MS"] / 1000, stop),
        name="outbox-relay",
        daemon=True,
    )
    relay.start()
    log.info("worker started", extra={"queue": queue.name, "sweep_interval": config["SWEEP_INTERVAL_SECONDS"]})
    try:
        while True:
            worker = Worker([queue.get()], connection=queue.connection())
            try:
                worker.work(with_scheduler=True, logging_level="WARNING")
                break
            except queue.Unreachable as error:
                if getattr(worker, "_stop_requested", False):
                    # Told to stop (SIGTERM, Ctrl-C) while Redis went away, as when `make run`
                    # stops everything at once: stop, do not wait for Redis.
                    break
                # Redis went away: wait for it instead of exiting, so the worker recovers by itself.
                log.warning("queue Redis unreachable; retrying", extra={"error": str(error)})
                time.sleep(1)
    finally:
        stop.set()


if __name__ == "__main__":
    main()
