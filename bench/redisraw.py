"""The reserve script alone, without HTTP: how many reserves Redis itself can do, and what one
EVALSHA costs a Python process (redis-py) — the floor under the HTTP reserve path."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass

import redis

from app.core.timeutil import now_ms
from app.inventory import keys as K
from app.inventory.stock import DealState, LiveStock, Order

DEAL = 1


@dataclass
class RedisRaw:
    server_rps: float | None  # redis-benchmark, 50 clients, EVALSHA reserve
    python_us_per_call: float  # one LiveStock.reserve from redis-py, wall time, one thread
    python_cpu_us_per_call: float  # the same, CPU time of the calling process
    note: str = ""


def _load(stock: LiveStock) -> None:
    stock.load(
        DealState(
            deal_id=DEAL,
            account_id=1,
            quantity=10**9,
            sold=0,
            price=100,
            currency="USD",
            max_per_purchase=0,
            max_per_user=0,
            holds=(),
            users=(),
        )
    )


def measure(redis_url: str, port: int, connections: int, requests: int, python_seconds: float) -> RedisRaw:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stock = LiveStock(client)
    client.flushall()  # a private server started for this measurement only
    _load(stock)
    keys = K.deal_keys(DEAL)
    inv, holds, units = keys.inv, keys.holds, keys.units
    now = now_ms()
    note = ""
    server_rps = None
    binary = shutil.which("redis-benchmark")
    if binary:
        sha = stock.scripts.sha("reserve")
        client.script_load(stock.scripts._scripts["reserve"].script)
        out = subprocess.run(
            [
                binary,
                "-p",
                str(port),
                "-c",
                str(connections),
                "-n",
                str(requests),
                "-r",
                "100000000000",
                "--csv",
                "EVALSHA",
                sha,
                "3",
                inv,
                holds,
                units,
                "1",
                "bench:__rand_int__",
                "1",
                str(now),
                str(now + 300_000),
                "100",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        match = re.search(r'"EVALSHA[^"]*","([\d.]+)"', out.stdout)
        if match:
            server_rps = float(match.group(1))
        else:
            note = f"redis-benchmark output not understood: {out.stdout[-300:]} {out.stderr[-300:]}"
    else:
        note = "redis-benchmark not installed (apt-get install redis-tools)"
    client.flushall()
    _load(stock)
    calls = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    deadline = started + python_seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            now = now_ms()
            stock.reserve(Order(DEAL, 1, f"py{calls}", "bench", 1), now, now + 300_000)
            calls += 1
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    client.close()
    return RedisRaw(server_rps, 1e6 * wall / calls, 1e6 * cpu / calls, note)
