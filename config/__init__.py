"""Settings, read from environment variables in one place.

Every process (web, worker, CLI, tests) builds its configuration with `load_settings()`.
Defaults run locally with nothing configured: SQLite in ./instance and Redis on localhost.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_SQLITE_PATH = Path("instance") / "offer-engine.sqlite3"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def _str(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name, "").strip() or default


@dataclass(frozen=True)
class Settings:
    #: SQLAlchemy URL of the durable store. `postgresql://` URLs use psycopg 3.
    database_url: str = f"sqlite:///{DEFAULT_SQLITE_PATH}"
    #: A read replica of DATABASE_URL for the dashboard and CSV exports (reads that may lag a
    #: little); unset: they read DATABASE_URL.
    database_replica_url: str = ""
    #: Redis holding live stock and holds.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Redis Cluster for live stock and holds instead of REDIS_URL: "host:port,host:port,..."
    #: (any reachable nodes; the client discovers the rest). RQ then needs its own plain Redis
    #: (RQ_REDIS_URL, defaulting to REDIS_URL): queues are not cluster-aware.
    redis_cluster_nodes: str = ""
    #: Writes that take stock wait until this many replicas have them (Redis WAIT) before the SQL
    #: commit, so a failover cannot bring back a master missing a committed hold. 0: no wait.
    redis_min_replicas: int = 0
    #: How long such a write waits for its replicas before the request answers 503.
    redis_replica_wait_ms: int = 500
    #: Redis for the RQ queue (may be a different, plain Redis from the stock one).
    rq_redis_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    #: How long a reservation holds its units.
    reservation_ttl_seconds: int = 300
    #: How often the worker returns expired holds to stock.
    sweep_interval_seconds: int = 5
    #: A hold can be extended, but never past this many seconds after it was reserved.
    max_hold_seconds: int = 900
    #: How long an Idempotency-Key's first response is kept.
    idempotency_ttl_seconds: int = 24 * 3600
    #: Largest request body accepted (bytes); larger bodies get 413.
    max_body_bytes: int = 1024 * 1024
    #: Key for signing the dashboard's session cookie; random per process when unset.
    secret_key: str = ""
    #: SQL connection pool per process.
    db_pool_size: int = 10
    db_max_overflow: int = 10
    db_pool_timeout_seconds: int = 5
    #: How long to wait for another process's rebuild of a deal before answering 503.
    rebuild_wait_seconds: int = 5
    #: How often the worker re-checks loaded deals against SQL and repairs drift.
    reconcile_interval_seconds: int = 60
    #: A cart left pending this long by an attempt that died (and nobody retried) is given up by
    #: the worker: its holds go back to stock.
    cart_abandon_seconds: int = 30
    #: How long a unit offered to a waiting customer is held for them.
    waitlist_offer_seconds: int = 600
    #: For how long a web process answers "sold out" for a deal it just saw sold out, without
    #: asking Redis (0 disables). Never sells more; may refuse for this long after units return.
    sold_out_cache_ms: int = 100
    #: Commit the reservations of concurrent requests together, one transaction per batch.
    group_commit: bool = True
    #: Per-account limit on writes (flask-limiter syntax, e.g. "10000/second"); "off" disables.
    rate_limit_writes: str = "10000/second"
    #: Webhook deliveries: retries after the first attempt, the first back-off (doubling each
    #: retry), and how long one attempt may take.
    webhook_max_retries: int = 6
    webhook_retry_base_seconds: int = 10
    webhook_timeout_seconds: int = 10
    #: Allow webhook receivers on loopback, private and link-local addresses (off: refused, so an
    #: account cannot make the service call inside its own network).
    webhook_allow_private_urls: bool = False
    #: How often the worker's relay looks for new events and free lane heads of the outbox
    #: (it goes on at once while a round found a full batch).
    relay_interval_ms: int = 200
    #: Events (and their deliveries) older than this are forgotten: GET /v1/events reaches back
    #: this far.
    event_retention_days: int = 30
    #: When set, GET /metrics needs `Authorization: Bearer <token>`.
    metrics_token: str = ""
    #: At most this many deals get per-deal gauges in /metrics (label cardinality).
    metrics_max_deals: int = 500
    #: One JSON log line per request (method, path without query, status, duration).
    access_log: bool = True
    #: Export OpenTelemetry traces (app/observability/telemetry.py): on when OpenTelemetry's own variables ask
    #: for an exporter (`otel_traces_requested`), off by default.
    otel_traces: bool = False

    def flask_config(self) -> dict:
        config = {key.upper(): value for key, value in asdict(self).items()}
        config["RQ_REDIS_URL"] = self.rq_redis_url or self.redis_url
        config["MAX_CONTENT_LENGTH"] = self.max_body_bytes
        config["SECRET_KEY"] = self.secret_key or os.urandom(32).hex()
        return config


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    defaults = Settings()
    return Settings(
        database_url=_str(env, "DATABASE_URL", defaults.database_url),
        database_replica_url=_str(env, "DATABASE_REPLICA_URL", ""),
        redis_url=_str(env, "REDIS_URL", defaults.redis_url),
        redis_cluster_nodes=_str(env, "REDIS_CLUSTER_NODES", ""),
        redis_min_replicas=_int(env, "REDIS_MIN_REPLICAS", defaults.redis_min_replicas, 0),
        redis_replica_wait_ms=_int(env, "REDIS_REPLICA_WAIT_MS", defaults.redis_replica_wait_ms, 1),
        rq_redis_url=_str(env, "RQ_REDIS_URL", ""),
        host=_str(env, "HOST", defaults.host),
        port=_int(env, "PORT", defaults.port, minimum=1),
        reservation_ttl_seconds=_int(env, "RESERVATION_TTL_SECONDS", defaults.reservation_ttl_seconds, 1),
        sweep_interval_seconds=_int(env, "SWEEP_INTERVAL_SECONDS", defaults.sweep_interval_seconds, 1),
        max_hold_seconds=_int(env, "MAX_HOLD_SECONDS", defaults.max_hold_seconds, 1),
        idempotency_ttl_seconds=_int(env, "IDEMPOTENCY_TTL_SECONDS", defaults.idempotency_ttl_seconds, 1),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", defaults.max_body_bytes, 1024),
        secret_key=_str(env, "SECRET_KEY", ""),
        db_pool_size=_int(env, "DB_POOL_SIZE", defaults.db_pool_size, 1),
        db_max_overflow=_int(env, "DB_MAX_OVERFLOW", defaults.db_max_overflow, 0),
        db_pool_timeout_seconds=_int(env, "DB_POOL_TIMEOUT_SECONDS", defaults.db_pool_timeout_seconds, 1),
        rebuild_wait_seconds=_int(env, "REBUILD_WAIT_SECONDS", defaults.rebuild_wait_seconds, 1),
        reconcile_interval_seconds=_int(env, "RECONCILE_INTERVAL_SECONDS", defaults.reconcile_interval_seconds, 1),
        cart_abandon_seconds=_int(env, "CART_ABANDON_SECONDS", defaults.cart_abandon_seconds, 1),
        waitlist_offer_seconds=_int(env, "WAITLIST_OFFER_SECONDS", defaults.waitlist_offer_seconds, 1),
        rate_limit_writes=_str(env, "RATE_LIMIT_WRITES", defaults.rate_limit_writes),
        sold_out_cache_ms=_int(env, "SOLD_OUT_CACHE_MS", defaults.sold_out_cache_ms, 0),
        group_commit=env_bool(env, "GROUP_COMMIT", defaults.group_commit),
        webhook_max_retries=_int(env, "WEBHOOK_MAX_RETRIES", defaults.webhook_max_retries, 0),
        webhook_retry_base_seconds=_int(env, "WEBHOOK_RETRY_BASE_SECONDS", defaults.webhook_retry_base_seconds, 1),
        webhook_timeout_seconds=_int(env, "WEBHOOK_TIMEOUT_SECONDS", defaults.webhook_timeout_seconds, 1),
        webhook_allow_private_urls=env_bool(env, "WEBHOOK_ALLOW_PRIVATE_URLS", defaults.webhook_allow_private_urls),
        relay_interval_ms=_int(env, "RELAY_INTERVAL_MS", defaults.relay_interval_ms, 10),
        event_retention_days=_int(env, "EVENT_RETENTION_DAYS", defaults.event_retention_days, 1),
        metrics_token=_str(env, "METRICS_TOKEN", ""),
        metrics_max_deals=_int(env, "METRICS_MAX_DEALS", defaults.metrics_max_deals, 0),
        access_log=env_bool(env, "ACCESS_LOG", defaults.access_log),
        otel_traces=otel_traces_requested(env),
    )


def otel_traces_requested(env: Mapping[str, str]) -> bool:
    """OpenTelemetry's standard variables ask for traces: an OTLP endpoint
    (OTEL_EXPORTER_OTLP_ENDPOINT, or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or an exporter
    (OTEL_TRACES_EXPORTER other than `none`), and the SDK not disabled (OTEL_SDK_DISABLED)."""
    if env_bool(env, "OTEL_SDK_DISABLED", False):
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )
