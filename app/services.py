"""Builds the service objects from settings: one set per process, shared by web and worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from app.accounts import AccountService
from app.events import Events
from app.inventory.deals import DealService
from app.inventory.group_commit import GroupCommitter
from app.inventory.ledger import LedgerService
from app.inventory.purchases import HoldPolicy, PurchaseService
from app.inventory.rebuild import Rebuilder
from app.inventory.stock import LiveStock
from app.inventory.sweeper import Sweeper
from app.queue import LazyQueue
from app.store.db import Database
from app.webhooks.dispatch import EventSink, RetryPolicy
from app.webhooks.service import WebhookService


def redis_client(url: str, *, decode: bool = True) -> Any:
    """A client for `url`. Short timeouts: a request must fail fast (503) when Redis is gone,
    not hang until gunicorn kills the worker."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
        retry_on_timeout=False,
    )


@dataclass
class Services:
    db: Database
    redis: Any
    stock: LiveStock
    rebuilder: Rebuilder
    accounts: AccountService
    deals: DealService
    purchases: PurchaseService
    ledger: LedgerService
    sweeper: Sweeper
    webhooks: WebhookService
    #: Where the services emit events after their commits (metrics, webhook deliveries).
    events: Events
    #: The RQ queue (webhook deliveries), connected on first use.
    queue: LazyQueue

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Services:
        db = Database(
            config["DATABASE_URL"],
            pool_size=config["DB_POOL_SIZE"],
            max_overflow=config["DB_MAX_OVERFLOW"],
            pool_timeout=config["DB_POOL_TIMEOUT_SECONDS"],
        )
        client = config.get("REDIS_CLIENT") or redis_client(config["REDIS_URL"])
        stock = LiveStock(client, sold_out_ttl_ms=config.get("SOLD_OUT_CACHE_MS", 0))
        rebuilder = Rebuilder(db, stock, wait_seconds=config["REBUILD_WAIT_SECONDS"])
        policy = HoldPolicy(
            ttl_seconds=config["RESERVATION_TTL_SECONDS"],
            max_hold_seconds=config["MAX_HOLD_SECONDS"],
        )
        webhooks = WebhookService(db)
        queue = LazyQueue(config.get("RQ_REDIS_URL") or config["REDIS_URL"])
        defaults = RetryPolicy()
        events = EventSink(
            db=db,
            redis=client,
            webhooks=webhooks,
            queue=queue,
            retry=RetryPolicy(
                max_retries=config.get("WEBHOOK_MAX_RETRIES", defaults.max_retries),
                base_seconds=config.get("WEBHOOK_RETRY_BASE_SECONDS", defaults.base_seconds),
                timeout_seconds=config.get("WEBHOOK_TIMEOUT_SECONDS", defaults.timeout_seconds),
            ),
        )
        committer = GroupCommitter(db, stock) if config.get("GROUP_COMMIT", True) else None
        purchases = PurchaseService(db, stock, rebuilder, policy, events=events, committer=committer)
        return cls(
            db=db,
            redis=client,
            stock=stock,
            rebuilder=rebuilder,
            accounts=AccountService(db),
            deals=DealService(db, stock, rebuilder),
            purchases=purchases,
            ledger=LedgerService(db, stock, purchases),
            sweeper=Sweeper(db, stock, events=events),
            webhooks=webhooks,
            events=events,
            queue=queue,
        )

    def close(self) -> None:
        self.queue.close()
        self.db.dispose()
        try:
            self.redis.close()
        except Exception:
            pass
