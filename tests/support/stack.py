"""The service as it runs in production: the Procfile's web (gunicorn) and worker (RQ)
processes, on a real PostgreSQL database and a private redis-server."""

from __future__ import annotations

import tempfile
from pathlib import Path

import requests

from tests.support.cluster import RedisClusterServers
from tests.support.servers import (
    PostgresDatabase,
    Process,
    RedisServer,
    free_port,
    run_cli,
    wait_for,
)

#: What gunicorn says when its port is taken: config/gunicorn.py's refusal (each worker binds
#: its own SO_REUSEPORT socket), or gunicorn's own (GUNICORN_REUSE_PORT=false).
PORT_TAKEN = ("Address already in use", "Connection in use")


class Stack:
    def __init__(
        self,
        *,
        web_concurrency: int = 4,
        ttl_seconds: int = 300,
        sweep_seconds: int = 1,
        extra_env: dict | None = None,
        database_proxy=None,
        redis_cluster: bool = False,
    ) -> None:
        self.database = PostgresDatabase(prefix="oe_e2e")
        #: Optional CuttableProxy: the processes then reach PostgreSQL through it.
        self.database_proxy = database_proxy
        #: The plain Redis: live stock and the RQ queue, or only the queue when stock lives on
        #: `cluster` (a 3-master Redis Cluster with a replica each).
        self.redis = RedisServer()
        self.cluster = RedisClusterServers() if redis_cluster else None
        #: gunicorn's port, below the ephemeral range (free_port): restart_web() starts it again on
        #: this port, which no client socket can take meanwhile.
        self.port = free_port()
        self.log_dir = Path(tempfile.mkdtemp(prefix="oe-e2e-"))
        self.env = {
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(web_concurrency),
            "RESERVATION_TTL_SECONDS": str(ttl_seconds),
            "SWEEP_INTERVAL_SECONDS": str(sweep_seconds),
            **(extra_env or {}),
        }
        self.web: Process | None = None
        self.workers: list[Process] = []
        self.secret = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, workers: int = 1) -> Stack:
        try:
            return self._start(workers)
        except BaseException:
            self.stop()  # whatever did start must not outlive the failed test
            raise

    def _start(self, workers: int) -> Stack:
        self.database.create()
        self.redis.start()
        self.env["DATABASE_URL"] = self.database.url
        self.env["REDIS_URL"] = self.redis.url
        if self.cluster is not None:
            self.cluster.start()
            self.env["REDIS_CLUSTER_NODES"] = self.cluster.startup_nodes
        run_cli(["db", "upgrade"], self.env)
        self.secret = run_cli(["accounts", "create", "e2e"], self.env).strip().splitlines()[-1]
        if self.database_proxy is not None:
            self.env["DATABASE_URL"] = self.database.url.replace(
                "127.0.0.1:5432", f"127.0.0.1:{self.database_proxy.port}"
            )
        self.web = Process("web", self.env, self.log_dir).start()
        for i in range(workers):
            worker = Process("worker", self.env, self.log_dir)
            worker.log_path = self.log_dir / f"worker-{i}.log"
            self.workers.append(worker.start())
        for attempt in range(5):
            try:
                self.wait_ready()
                return self
            except AssertionError:
                # Taken since free_port said it was free (by another program: free_port never
                # gives a port twice to this one): gunicorn refused it at start
                # (config/gunicorn.py), so start elsewhere.
                if not any(taken in self.web.log_tail(200) for taken in PORT_TAKEN) or attempt == 4:
                    raise
                self.web.stop()  # closes its log
                self.web.log_path.rename(self.log_dir / f"web-port-{self.port}-taken.log")
                self.port = free_port()
                self.env["PORT"] = str(self.port)
                self.web = Process("web", self.env, self.log_dir).start()
        raise AssertionError("unreachable")

    def restart_web(self) -> None:
        self.web.kill()
        self.web = Process("web", self.env, self.log_dir).start()

    def restart_worker(self, index: int) -> None:
        self.workers[index].kill()
        self.workers[index].start()

    def web_worker_pids(self) -> list[int]:
        """gunicorn's worker processes (children of the master)."""
        import subprocess

        out = subprocess.run(["pgrep", "-P", str(self.web.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def wait_ready(self, timeout: float = 60) -> None:
        def ready():
            if not self.web.alive():
                return "exited"  # fails at once, not after the timeout
            if any(taken in self.web.log_tail(20) for taken in PORT_TAKEN):
                return "port taken"
            return requests.get(f"{self.url}/readyz", timeout=2).status_code == 200

        try:
            outcome = wait_for(ready, timeout, "web /readyz")
            if outcome in ("exited", "port taken"):
                raise AssertionError(f"web {outcome} before it was ready")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.logs()}") from None  # say why, from the processes' logs

    def stock_client(self):
        """A client on the Redis that holds live stock (the cluster when there is one)."""
        import redis

        if self.cluster is not None:
            host, port = self.cluster.startup_nodes.split(",")[0].split(":")
            return redis.RedisCluster(host=host, port=int(port), decode_responses=True)
        return redis.Redis.from_url(self.redis.url, decode_responses=True)

    def session(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.secret}"
        return session

    def stop(self) -> None:
        for process in [self.web, *self.workers]:
            if process is not None:
                process.stop()
        self.redis.stop()
        if self.cluster is not None:
            self.cluster.stop()
        self.database.drop()

    def logs(self) -> str:
        parts = []
        for process in [self.web, *self.workers]:
            if process is not None:
                parts.append(f"--- {process.log_path.name}\n{process.log_tail(60)}")
        return "\n".join(parts)
