"""The HTTP servers under test, each started from the Procfile's web line (same gunicorn
settings) and torn down by pid: the app (with its RQ worker), and the three baselines."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import redis

from bench.procs import Postgres, Service, cpu_seconds, free_port, wait_http
from bench.wrk import WrkResult, run_wrk

BIG_QUANTITY = 10**9  # the largest quantity a deal may have: never sells out in a run


@dataclass
class Check:
    ok: bool
    text: str
    #: The check could not be made (e.g. a table it reads is not there): not a failure of the
    #: system under test, but not a pass either.
    unchecked: bool = False


@dataclass
class Target:
    """One server under test. `kind` is app, redisonly, bare or rowlock (or app-cluster-...: the
    app with its stock on the Redis Cluster at `cluster_nodes`)."""

    kind: str
    env: dict[str, str]
    db: Postgres
    redis_url: str
    redis_pids: list[int]
    secret: str
    log_dir: Path
    app: str | None = None
    with_worker: bool = False
    services: list[Service] = field(default_factory=list)
    port: int = 0
    #: REDIS_CLUSTER_NODES when the live stock is on a Redis Cluster.
    cluster_nodes: str = ""
    #: The table's system column (default: kind).
    label: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, extra_env: dict[str, str] | None = None, tag: str = "") -> Target:
        self.port = free_port()
        env = {**self.env, "PORT": str(self.port), **(extra_env or {})}
        name = f"{self.kind}{'-' + tag if tag else ''}"
        web = Service.procfile("web", env, self.log_dir, app=self.app, name=f"web-{name}").start()
        self.services = [web]
        if self.with_worker:
            self.services.append(Service.procfile("worker", env, self.log_dir, name=f"worker-{name}").start())
        wait_http(f"{self.url}/healthz", web)
        return self

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services = []

    @property
    def web(self) -> Service:
        return self.services[0]

    def server_pids(self) -> list[int]:
        return self.web.pids()

    # -- driving it -----------------------------------------------------------------------

    def wrk(self, label: str, script: str, *, seconds: float, connections: int, env: dict | None = None) -> WrkResult:
        result = run_wrk(
            label,
            self.url,
            script,
            seconds=seconds,
            connections=connections,
            env={"BENCH_SECRET": self.secret, **(env or {})},
            server_pids=self.server_pids,
            db_pids=self.db.backend_pids,
            redis_pids=lambda: self.redis_pids,
            log_dir=self.log_dir,
        )
        self.settle()
        return result

    def settle(self, timeout: float = 15) -> None:
        """Wait for the requests still in flight when wrk stopped (the server finishes them
        after the client has gone): until the web processes are idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = cpu_seconds(self.server_pids())
            time.sleep(0.3)
            if cpu_seconds(self.server_pids()) - before < 0.02:
                return

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.secret}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, {}

    # -- deals ----------------------------------------------------------------------------

    def create_deal(self, quantity: int, title: str) -> int:
        """A deal of `quantity` units, loaded and ready to sell."""
        if self.kind == "rowlock":
            with self.db.connect(autocommit=True) as connection:
                (deal_id,) = connection.execute(
                    "INSERT INTO rowlock_deals (quantity, available, reserved) VALUES (%s, %s, 0) RETURNING id",
                    (quantity, quantity),
                ).fetchone()
            return deal_id
        status, body = self.request("POST", "/v1/deals", {"title": title, "price_per_unit": 1999, "quantity": quantity})
        if status != 201:
            raise RuntimeError(f"creating a deal answered {status}: {body}")
        deal_id = body["deal"]["id"]
        # A flash sale's deal has been looked at before the sale opens: its live state is in
        # Redis already (GET shows live stock, loading it on first use).
        status, _ = self.request("GET", f"/v1/deals/{deal_id}")
        assert status == 200, status
        return deal_id

    def has_carts(self) -> bool:
        """Whether the app serves `POST /v1/carts/reserve` (an empty cart is refused with a 4xx
        other than 404/405 when it does; nothing is held either way)."""
        if self.kind in ("bare", "rowlock", "redisonly"):
            return False
        status, _ = self.request("POST", "/v1/carts/reserve", {"items": []})
        return status not in (404, 405)

    def redis_inv(self, deal_id: int) -> dict[str, str]:
        if self.cluster_nodes:
            host, port = self.cluster_nodes.split(",")[0].split(":")
            client = redis.RedisCluster(host=host, port=int(port), decode_responses=True)
        else:
            client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            return client.hgetall(f"oe:{{deal:{deal_id}}}:inv")
        finally:
            client.close()

    def sql(self, query: str, *args) -> list[tuple]:
        with self.db.connect() as connection:
            return connection.execute(query, args).fetchall()


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def to_epoch(naive_utc) -> float:
    return naive_utc.replace(tzinfo=UTC).timestamp()
