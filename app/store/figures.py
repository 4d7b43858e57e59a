"""Figures measured outside the web processes (the worker's sweeps, webhook attempts), kept in
one Redis hash so that every web process's /metrics exports them (app/observability/metrics.py).

The worker is another process, often on another machine: it publishes its figures here with one
pipelined write per sweep or delivery rather than sharing a directory with the web processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: hash: figure name -> its value (counters, histogram buckets and sums, last values).
KEY = "oe:metrics"


class SharedFigures:
    def __init__(self, client: Any) -> None:
        self.client = client

    def add(self, field: str, amount: int = 1) -> None:
        self.client.hincrby(KEY, field, amount)

    def record(self, counts: Mapping[str, int], sums: Mapping[str, float] = {}, latest: Mapping[str, str] = {}) -> None:
        """Add `counts` and `sums`, and set `latest`, in one pipelined round trip."""
        pipe = self.client.pipeline(transaction=False)
        for field, amount in counts.items():
            pipe.hincrby(KEY, field, amount)
        for field, amount in sums.items():
            pipe.hincrbyfloat(KEY, field, amount)
        if latest:
            pipe.hset(KEY, mapping=dict(latest))
        pipe.execute()

    def read(self) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.client.hgetall(KEY).items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
