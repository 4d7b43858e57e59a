"""Builds the service objects from settings: one set per process, shared by web and worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from app.accounts.service import AccountService
from app.core.events import Events
from app.core.idempotency import KeptAnswers
from app.inventory.carts import CartService
from app.inventory.deals import DealService
from app.inventory.group_commit import GroupCommitter
from app.inventory.ledger import LedgerService
from app.inventory.protocol import Protocol
from app.inventory.purchases import HoldPolicy, PurchaseService
from app.inventory.rebuild import Rebuilder
from app.inventory.reports import ReportService
from app.inventory.stock import LiveStock
from app.inventory.storefront import FEED_INTERVAL_SECONDS, FEED_REFRESH_SECONDS, LiveFeed, Storefront
from app.inventory.sweeper import Sweeper
from app.inventory.waitlist import WaitlistService
from app.store.db import Database
from app.store.figures import SharedFigures
from app.store.models import utcnow
from app.store.queue import LazyQueue
from app.webhooks.dispatch import EventSink, RetryPolicy
from app.webhooks.outbox import Outbox
from app.webhooks.service import WebhookService


def cluster_nodes(spec: str) -> list[tuple[str, int]]:
    """REDIS_CLUSTER_NODES ("host:port,host:port") as (host, port) pairs."""
    nodes = []
    for part in (p.strip() for p in spec.split(",")):
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"REDIS_CLUSTER_NODES: expected host:port, got {part!r}")
        nodes.append((host, int(port)))
    return nodes


def stock_redis(config: dict[str, Any]) -> Any:
    """The client for live stock and holds: a Redis Cluster when REDIS_CLUSTER_NODES is set,
    else the single server at REDIS_URL (`redis://`, `rediss://` or `unix://`)."""
    spec = config.get("REDIS_CLUSTER_NODES")
    if not spec:
        return redis_client(config["REDIS_URL"])
    from redis.cluster import ClusterNode

    return redis.RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(spec)],
        decode_responses=True,
        socket_timeout=5,
        socket_connect_timeout=2,
        # The client's own retries (new topology, another node) stay short: during a failover
        # the request answers 503 within a fraction of a second and the caller retries, rather
        # than a web thread waiting out the election.
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.25), retries=2),
    )


def limits_storage_uri(config: dict[str, Any]) -> str:
    """Where the write limits count (the `limits` library's storage URI): the stock Redis."""
    spec = config.get("REDIS_CLUSTER_NODES")
    if not spec:
        return config["REDIS_URL"]
    return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in cluster_nodes(spec))


def redis_client(url: str, *, decode: bool = True) -> Any:
    """A client for `url`. Short timeouts: a request must fail fast (503) when Redis is gone,
    not hang until gunicorn kills the worker."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
        # A command is sent again at most twice, soon (every script is safe to run twice); a
        # request must fail fast (503) when Redis is gone, not back off for seconds.
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.25), retries=2),
    )


@dataclass
class Services:
    db: Database
    #: Where the dashboard and exports read: a replica of `db` when one is configured, else `db`.
    reports_db: Database
    redis: Any
    stock: LiveStock
    rebuilder: Rebuilder
    accounts: AccountService
    deals: DealService
    purchases: PurchaseService
    carts: CartService
    waitlist: WaitlistService
    ledger: LedgerService
    sweeper: Sweeper
    webhooks: WebhookService
    #: What operators read (the dashboard, CSV exports), from `reports_db`.
    reports: ReportService
    #: Where the services emit events after their commits (the counters of /metrics).
    events: Events
    #: The outbox's relay (events to webhook deliveries) and the event feed of GET /v1/events.
    outbox: Outbox
    #: The RQ queue (webhook deliveries), connected on first use.
    queue: LazyQueue
    #: The answers kept for Idempotency-Keys.
    kept: KeptAnswers
    #: Figures the worker publishes for every web process's /metrics.
    figures: SharedFigures
    #: The write protocol every stock-changing write runs through.
    protocol: Protocol
    #: Public deals for storefronts, and their live feed (one poller per process).
    storefront: Storefront

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Services:
        db = Database(
            config["DATABASE_URL"],
            pool_size=config["DB_POOL_SIZE"],
            max_overflow=config["DB_MAX_OVERFLOW"],
            pool_timeout=config["DB_POOL_TIMEOUT_SECONDS"],
        )
        reports_db = db
        if config.get("DATABASE_REPLICA_URL"):
            reports_db = Database(
                config["DATABASE_REPLICA_URL"],
                pool_size=max(2, config["DB_POOL_SIZE"] // 2),
                max_overflow=config["DB_MAX_OVERFLOW"],
                pool_timeout=config["DB_POOL_TIMEOUT_SECONDS"],
            )
        client = config.get("REDIS_CLIENT") or stock_redis(config)
        stock = LiveStock(
            client,
            sold_out_ttl_ms=config.get("SOLD_OUT_CACHE_MS", 0),
            min_replicas=config.get("REDIS_MIN_REPLICAS", 0),
            replica_wait_ms=config.get("REDIS_REPLICA_WAIT_MS", 500),
            offer_ms=config.get("WAITLIST_OFFER_SECONDS", 600) * 1000,
        )
        # Tests give a controlled clock; everything that reads "now" reads it from here.
        clock = config.get("CLOCK") or utcnow
        rebuilder = Rebuilder(db, stock, wait_seconds=config["REBUILD_WAIT_SECONDS"], clock=clock)
        policy = HoldPolicy(
            ttl_seconds=config["RESERVATION_TTL_SECONDS"],
            max_hold_seconds=config["MAX_HOLD_SECONDS"],
        )
        webhooks = WebhookService(db, allow_private=config.get("WEBHOOK_ALLOW_PRIVATE_URLS", False))
        queue = LazyQueue(config.get("RQ_REDIS_URL") or config["REDIS_URL"])
        defaults = RetryPolicy()
        shared = SharedFigures(client)
        events = EventSink(shared=shared)
        outbox = Outbox(
            db,
            queue,
            RetryPolicy(
                max_retries=config.get("WEBHOOK_MAX_RETRIES", defaults.max_retries),
                base_seconds=config.get("WEBHOOK_RETRY_BASE_SECONDS", defaults.base_seconds),
                timeout_seconds=config.get("WEBHOOK_TIMEOUT_SECONDS", defaults.timeout_seconds),
            ),
            shared,
            retention_days=config.get("EVENT_RETENTION_DAYS", 30),
            clock=clock,
        )
        kept = KeptAnswers(db, config["IDEMPOTENCY_TTL_SECONDS"], clock=clock)
        committer = GroupCommitter(db, stock, kept, threaded=config.get("GROUP_COMMIT", True), clock=clock)
        protocol = Protocol(db, stock, rebuilder, committer, kept, clock=clock)
        purchases = PurchaseService(db, stock, protocol, policy, events=events)
        deals = DealService(db, stock, rebuilder, kept)
        feed = LiveFeed(
            deals,
            stock,
            clock,
            # Tests shorten them; production keeps the defaults (docs/storefront.md).
            interval=config.get("STREAM_INTERVAL_SECONDS", FEED_INTERVAL_SECONDS),
            refresh=config.get("STREAM_REFRESH_SECONDS", FEED_REFRESH_SECONDS),
        )
        waitlist = WaitlistService(db, stock, protocol, kept, events=events)
        carts = CartService(
            db, stock, protocol, policy, events=events, abandon_seconds=config.get("CART_ABANDON_SECONDS", 30)
        )
        purchases.record_offers = carts.record_offers = waitlist.record
        return cls(
            db=db,
            reports_db=reports_db,
            redis=client,
            stock=stock,
            rebuilder=rebuilder,
            accounts=AccountService(db),
            deals=deals,
            purchases=purchases,
            waitlist=waitlist,
            carts=carts,
            ledger=LedgerService(db, stock, protocol),
            sweeper=Sweeper(db, stock, events=events),
            webhooks=webhooks,
            reports=ReportService(reports_db, stock, rebuilder, waitlist),
            events=events,
            outbox=outbox,
            queue=queue,
            kept=kept,
            figures=shared,
            protocol=protocol,
            storefront=Storefront(deals, feed),
        )

    def close(self) -> None:
        self.storefront.feed.close()
        self.protocol.committer.close()
        self.queue.close()
        self.db.dispose()
        if self.reports_db is not self.db:
            self.reports_db.dispose()
        try:
            self.redis.close()
        except Exception:
            pass
