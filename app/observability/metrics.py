"""Prometheus metrics: GET /metrics in the text format.

Three sources, each chosen so that the hot path pays nothing but an in-memory increment:

* **In-process counters and histograms** (prometheus-client): HTTP requests and latency per
  endpoint, reservations, claims, direct purchases, releases, sell-outs, sold-out refusals,
  webhook deliveries enqueued, public streams open and their events. Under gunicorn they live
  in `PROMETHEUS_MULTIPROC_DIR` (config/gunicorn.py creates one per run) and /metrics sums
  every worker's files; under the Flask test client or a single process they live in the
  default registry.
* **Shared figures in Redis** (app/store/figures.py, written by whichever process did the work): what
  the RQ worker measures (sweep duration and lag histograms, holds returned, reservations
  expired, events relayed, webhook deliveries enqueued and attempted). The worker is another process, often on another machine, so it
  publishes its figures to Redis with one pipelined write per sweep or delivery rather than
  sharing a directory with the web processes.
* **Per-deal gauges computed at scrape time** (`DealGauges`): available, reserved, sold,
  quantity and active holds for up to METRICS_MAX_DEALS loaded deals, asked of LiveStock (one
  pipelined round trip), and the same deals' waitlists (customers waiting, offers holding a
  unit), asked of WaitlistService (one more). Nothing maintains them on reserve or claim.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from app.core.timeutil import now_ms

log = logging.getLogger(__name__)

# The `_created` series double the output and no dashboard of ours reads them.
disable_created_metrics()

# -- in-process (per gunicorn worker, summed by the multiprocess collector) -----------------------

HTTP_REQUESTS = Counter(
    "offer_engine_http_requests", "HTTP requests answered, by endpoint and status.", ["method", "endpoint", "status"]
)
HTTP_LATENCY = Histogram(
    "offer_engine_http_request_duration_seconds",
    "Time from the first request hook to the response, by endpoint.",
    ["method", "endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RESERVATIONS = Counter("offer_engine_reservations", "Holds made.")
CLAIMS = Counter("offer_engine_claims", "Reservations claimed (fulfilled).")
DIRECT_PURCHASES = Counter("offer_engine_direct_purchases", "Direct purchases (fulfilled at once).")
RELEASES = Counter("offer_engine_releases", "Holds released before they ended.")
SOLD_OUTS = Counter("offer_engine_deals_sold_out", "Takes that left a deal with nothing available.")
SOLD_OUT_REFUSALS = Counter(
    "offer_engine_sold_out_refusals", "Requests refused because the deal had too few units left.", ["endpoint"]
)
# The public live stream (app/web/api/public/stream.py). `livesum`: the open streams of the
# gunicorn workers alive now, summed (a dead worker's streams are gone with it).
STREAMS_OPEN = Gauge(
    "offer_engine_streams_open", "Public availability streams open now (SSE connections).", multiprocess_mode="livesum"
)
STREAM_EVENTS = Counter(
    "offer_engine_stream_events_sent", "`stock` events written to public availability streams (heartbeats excluded)."
)

# -- shared through Redis (written by the worker, exported by every web process) ------------------

#: Bucket bounds (seconds) of the sweep's duration and lag histograms.
SWEEP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SWEEP_LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


def _bucket_field(prefix: str, bound: float | str) -> str:
    return f"{prefix}:le:{bound}"


def publish_sweep(figures: Any, report: Any) -> None:
    """Record one sweep's figures in the shared figures (`SharedFigures`, one pipelined write).
    Best effort: a lost write costs one sample, never the sweep."""
    counts: dict[str, int] = {}
    sums: dict[str, float] = {}
    for prefix, value, bounds in (
        ("sweep_duration", report.seconds, SWEEP_DURATION_BUCKETS),
        ("sweep_lag", report.lag_seconds, SWEEP_LAG_BUCKETS),
    ):
        for bound in bounds:
            if value <= bound:
                counts[_bucket_field(prefix, bound)] = 1
        counts[f"{prefix}:count"] = 1
        sums[f"{prefix}:sum"] = float(value)
    counts["sweep_holds_returned"] = report.holds
    counts["sweep_units_returned"] = report.units
    latest = {
        "sweep_last_seconds": repr(float(report.seconds)),
        "sweep_last_lag_seconds": repr(float(report.lag_seconds)),
        "sweep_last_finished": repr(time.time()),
    }
    try:
        figures.record(counts, sums, latest)
    except Exception as error:  # metrics must never fail the sweep
        log.warning("could not publish sweep metrics", extra={"error": str(error)[:200]})


def publish_counts(figures: Any, counts: dict[str, int], latest: dict[str, str] | None = None) -> None:
    """Add to several shared counters (and set `latest` gauges) in one round trip; best effort."""
    try:
        figures.record(counts, {}, latest or {})
    except Exception as error:
        log.warning("could not publish metrics", extra={"fields": sorted(counts), "error": str(error)[:200]})


def count_shared(figures: Any, field: str, amount: int = 1) -> None:
    """Add to a counter in the shared figures (for figures produced outside the web processes)."""
    try:
        figures.add(field, amount)
    except Exception as error:
        log.warning("could not publish a metric", extra={"field": field, "error": str(error)[:200]})


#: Counters kept in Redis: field -> (metric name, help).
SHARED_COUNTERS = {
    "expiries": ("offer_engine_expiries", "Reservations whose hold ended unclaimed (marked expired)."),
    "sweep_holds_returned": ("offer_engine_sweep_holds_returned", "Ended holds the sweep returned to stock."),
    "sweep_units_returned": ("offer_engine_sweep_units_returned", "Units the sweep returned to stock."),
    "webhook_delivered": ("offer_engine_webhook_deliveries", "Webhook deliveries the receiver accepted (2xx)."),
    "webhook_failed_attempts": (
        "offer_engine_webhook_failed_attempts",
        "Webhook delivery attempts that failed (non-2xx or no answer).",
    ),
    "events_relayed": ("offer_engine_events_relayed", "Events the relay numbered (and fanned out to webhooks)."),
    # The waitlist (app/inventory/waitlist.py), counted by the event sink (app/webhooks/dispatch.py)
    # in whichever process made the change: offers are made by releases in the web and by sweeps
    # in the worker, and lapse in both.
    "waitlist_offers_made": (
        "offer_engine_waitlist_offers_made",
        "Waitlist offers made: a unit that came back held for the next waiting customer.",
    ),
    "waitlist_offers_claimed": (
        "offer_engine_waitlist_offers_claimed",
        "Waitlist offers the customer claimed (bought).",
    ),
    "waitlist_offers_lapsed": (
        "offer_engine_waitlist_offers_lapsed",
        "Waitlist offers that ended unclaimed (expired or released), their unit passed on.",
    ),
}
#: Counters kept in Redis with one label: field prefix -> (metric name, help, label); a field is
#: `<prefix>:<label value>` (from a bounded set: event types).
SHARED_LABELLED_COUNTERS = {
    "webhook_enqueued": (
        "offer_engine_webhook_deliveries_enqueued",
        "Webhook delivery jobs put on the queue.",
        "event",
    ),
}


class SharedFiguresCollector(Collector):
    """Exports what other processes published to the shared figures (app/store/figures.py)."""

    def __init__(self, figures: Any) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("offer_engine_metrics_redis_up", "1 when /metrics could read Redis.")
        try:
            figures = self.figures.read()
        except Exception as error:
            log.warning("metrics: cannot read shared figures", extra={"error": str(error)[:200]})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for field, (name, documentation) in SHARED_COUNTERS.items():
            yield CounterMetricFamily(name, documentation, value=float(figures.get(field, 0)))
        for prefix, (name, documentation, label) in SHARED_LABELLED_COUNTERS.items():
            family = CounterMetricFamily(name, documentation, labels=[label])
            for field, value in sorted(figures.items()):
                if field.startswith(prefix + ":"):
                    family.add_metric([field[len(prefix) + 1 :]], float(value))
            yield family
        for prefix, bounds, name, documentation in (
            (
                "sweep_duration",
                SWEEP_DURATION_BUCKETS,
                "offer_engine_sweep_duration_seconds",
                "How long each sweep took (measured in the worker).",
            ),
            (
                "sweep_lag",
                SWEEP_LAG_BUCKETS,
                "offer_engine_sweep_lag_seconds",
                "How late the oldest hold returned by each sweep was.",
            ),
        ):
            buckets = [(str(bound), float(figures.get(_bucket_field(prefix, bound), 0))) for bound in bounds]
            count = float(figures.get(f"{prefix}:count", 0))
            buckets.append(("+Inf", count))
            yield HistogramMetricFamily(
                name, documentation, buckets=buckets, sum_value=float(figures.get(f"{prefix}:sum", 0))
            )
        for field, name, documentation in (
            ("sweep_last_seconds", "offer_engine_sweep_last_duration_seconds", "Duration of the last sweep."),
            ("sweep_last_lag_seconds", "offer_engine_sweep_last_lag_seconds", "Lag of the last sweep."),
            (
                "sweep_last_finished",
                "offer_engine_sweep_last_finished_timestamp_seconds",
                "When the last sweep finished (Unix time); alert when it falls behind.",
            ),
            (
                "relay_last_finished",
                "offer_engine_relay_last_finished_timestamp_seconds",
                "When the outbox relay last finished a round (Unix time); alert when it falls behind.",
            ),
        ):
            if field in figures:
                yield GaugeMetricFamily(name, documentation, value=float(figures[field]))


class DealGauges(Collector):
    """Live numbers of loaded deals, read from Redis when Prometheus scrapes."""

    FIELDS = (
        ("available", "offer_engine_deal_available_units", "Units a buyer can still reserve or buy."),
        ("reserved", "offer_engine_deal_reserved_units", "Units held by active reservations."),
        ("sold", "offer_engine_deal_sold_units", "Units sold."),
        ("quantity", "offer_engine_deal_quantity_units", "The deal's quantity."),
        ("holds", "offer_engine_deal_active_holds", "Active holds (reservations not yet ended)."),
    )

    WAITLIST_FIELDS = (
        ("waiting", "offer_engine_deal_waitlist_waiting", "Customers on the deal's waitlist waiting for a unit."),
        ("offered", "offer_engine_deal_waitlist_offered", "Waitlist offers holding a unit for their customer now."),
    )

    def __init__(self, stock: Any, max_deals: int, waitlist: Any = None) -> None:
        self.stock = stock
        self.max_deals = max_deals
        #: WaitlistService (its `lengths`), or None: no waitlist gauges.
        self.waitlist = waitlist

    def collect(self) -> Iterator[Metric]:
        loaded = GaugeMetricFamily("offer_engine_deals_loaded", "Deals whose live state is in Redis.")
        families = {
            field: GaugeMetricFamily(name, documentation, labels=["deal_id", "account_id"])
            for field, name, documentation in self.FIELDS
        }
        try:
            total = self.stock.loaded_count()
            deal_ids = self.stock.some_loaded_deals(self.max_deals)
            snapshots = self.stock.snapshots(deal_ids, now_ms()) if deal_ids else {}
        except Exception as error:
            log.warning("metrics: cannot read deals", extra={"error": str(error)[:200]})
            return
        loaded.add_metric([], total)
        yield loaded
        for deal_id in deal_ids:
            snapshot = snapshots.get(deal_id)
            if snapshot is None:
                continue
            labels = [str(deal_id), str(snapshot.account_id)]
            for field, family in families.items():
                value = getattr(snapshot, field)
                family.add_metric(labels, max(value, 0) if field == "available" else value)
        yield from families.values()
        yield from self._waitlists(deal_ids, snapshots)

    def _waitlists(self, deal_ids: list[int], snapshots: dict) -> Iterator[Metric]:
        """The waitlists of the same deals (the same labels, so no more series than deals)."""
        if self.waitlist is None:
            return
        families = {
            field: GaugeMetricFamily(name, documentation, labels=["deal_id", "account_id"])
            for field, name, documentation in self.WAITLIST_FIELDS
        }
        shown = [deal_id for deal_id in deal_ids if snapshots.get(deal_id) is not None]
        try:
            lengths = self.waitlist.lengths(shown)
        except Exception as error:
            log.warning("metrics: cannot read waitlists", extra={"error": str(error)[:200]})
            return
        for deal_id in shown:
            labels = [str(deal_id), str(snapshots[deal_id].account_id)]
            for field, family in families.items():
                family.add_metric(labels, getattr(lengths[deal_id], field))
        yield from families.values()


# -- exposition -----------------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def process_registry() -> CollectorRegistry:
    """This process's metrics, or every gunicorn worker's when running in multiprocess mode."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    from prometheus_client import REGISTRY

    return REGISTRY


def scrape_registry(services: Any, max_deals: int) -> CollectorRegistry:
    """The collectors that read Redis at scrape time (one registry per app)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SharedFiguresCollector(services.figures))
    registry.register(DealGauges(services.stock, max_deals, services.waitlist))
    return registry


def exposition(registries: Iterable[CollectorRegistry]) -> tuple[bytes, str]:
    """The text format of every registry, one after the other (their metric names differ)."""
    return b"".join(generate_latest(registry) for registry in registries), CONTENT_TYPE_LATEST


# -- HTTP endpoint labels ---------------------------------------------------------------------------

_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_rule_labels: dict[str, str] = {}


_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once per process (labels() takes a lock and formats
    its values on every call). Only for label values from a bounded set."""
    key = (metric, values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def endpoint_label(rule: Any) -> str:
    """The matched rule `/v1/purchases/<string(maxlength=64):purchase_id>/claim` ->
    `/v1/purchases/<purchase_id>/claim`; requests that matched no route share one label, so a
    scan cannot blow up the series count."""
    if rule is None:
        return "<unmatched>"
    label = _rule_labels.get(rule.rule)
    if label is None:
        label = _rule_labels[rule.rule] = _CONVERTER.sub(r"<\1>", rule.rule)
    return label
