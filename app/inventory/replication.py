"""Writes that a Redis failover cannot lose: WAIT for the replicas before the SQL commit.

A take is committed to SQL only after its script ran in Redis (docs/consistency.md). If the
master then dies before its replica has the take, the promoted replica would show the units as
still in stock while SQL says they are held: an oversell. So with REDIS_MIN_REPLICAS > 0, a
write that defines live state (a take, a load, a drop) is pipelined with `WAIT n timeout` on
the one connection to the master that serves the deal, and it counts only once n replicas
acknowledged it. WAIT counts the replicas that have every write of its own connection.

A master with fewer replicas than asked (its replica died, or was just promoted and has none
yet) waits for the ones it has: there is nobody to fail over to who could lack the write, and
refusing every write until a new replica arrives would stop the sale. The count of each
master's replicas is read with ROLE at most once a second, and again whenever a WAIT comes up
short (the replica may just have gone).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import AskError, ConnectionError, NoScriptError, RedisClusterException, TimeoutError

#: How long a master's replica count is trusted.
REPLICA_COUNT_TTL = 1.0


class NotReplicated(RuntimeError):
    """A write reached the master but fewer replicas than required acknowledged it in time."""

    def __init__(self, acked: int, wanted: int) -> None:
        super().__init__(f"{acked} of {wanted} replicas acknowledged the write")


class ReplicatedWrites:
    def __init__(self, client: Any, *, min_replicas: int, wait_ms: int) -> None:
        self.client = client
        self.cluster = isinstance(client, redis.RedisCluster)
        self.min_replicas = min_replicas
        self.wait_ms = wait_ms
        self._replicas: dict[str, tuple[int, float]] = {}  # master name -> (replicas, read at)
        self._lock = threading.Lock()

    def run(self, key: str, command: tuple, *, wrote: Callable[[Any], bool], script: Script | None = None) -> Any:
        """`command` on the master serving `key`; when `wrote(reply)`, only once the replicas
        have it. Raises NotReplicated when they did not acknowledge it in time."""
        for attempt in range(3):
            master = self._master_for(key)
            try:
                wanted = min(self.min_replicas, self._replica_count(master))
                pipe = master.pipeline(transaction=False)
                pipe.execute_command(*command)
                if wanted:
                    pipe.execute_command("WAIT", wanted, self.wait_ms)
                replies = pipe.execute()
            except (ConnectionError, TimeoutError):
                # This path talks to the node directly, so the cluster client never sees the
                # failure: make it read the topology again, or every retry would go to the
                # dead master long after its replica took over.
                self._refresh_topology()
                raise
            except NoScriptError:
                if script is None or attempt == 2:
                    raise
                master.script_load(script.script)  # a restarted or newly promoted master
                continue
            except AskError:  # MOVED or ASK: the slot has a new master (a failover, a reshard)
                if attempt == 2:
                    raise
                self._refresh_topology()
                continue
            reply = replies[0]
            if wanted and wrote(reply):
                acked = int(replies[1])
                if acked < wanted and acked < min(self.min_replicas, self._replica_count(master, fresh=True)):
                    raise NotReplicated(acked, wanted)
            return reply
        raise AssertionError("unreachable")

    def _replica_count(self, master: Any, *, fresh: bool = False) -> int:
        name = self._name(master)
        now = time.monotonic()
        cached = self._replicas.get(name)
        if cached is not None and not fresh and now - cached[1] < REPLICA_COUNT_TTL:
            return cached[0]
        role = master.execute_command("ROLE")
        count = len(role[2]) if role and role[0] in ("master", b"master") else 0
        with self._lock:
            self._replicas[name] = (count, now)
        return count

    @staticmethod
    def _name(master: Any) -> str:
        kwargs = master.connection_pool.connection_kwargs
        return f"{kwargs.get('host')}:{kwargs.get('port')}:{kwargs.get('path', '')}"

    def _refresh_topology(self) -> None:
        if not self.cluster:
            return
        try:
            self.client.nodes_manager.initialize()
        except (ConnectionError, TimeoutError, RedisClusterException):
            pass  # no node answers yet; the next request tries again

    def _master_for(self, key: str) -> Any:
        if not self.cluster:
            return self.client
        return self.client.get_redis_connection(self.client.get_node_from_key(key))
