"""The RQ queue shared by the web app (which enqueues webhook deliveries) and the worker.

RQ needs a client that returns bytes (it does not work with decode_responses=True), so the
queue gets its own client on RQ_REDIS_URL, made on first use: a process that never enqueues
never connects.
"""

from __future__ import annotations

import threading
from typing import Any

import redis

#: The one queue every job goes to (the worker listens on it).
QUEUE_NAME = "offer-engine"


def rq_client(url: str) -> Any:
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=2)


def slot_key(job: str, slot: int) -> str:
    """Claimed by the one worker that enqueues `job` ("sweep", "maintenance") for this slot."""
    return f"oe:{job}-slot:{slot}"


class LazyQueue:
    """An RQ `Queue` on `url`, built the first time it is needed."""

    #: The queue's Redis does not answer (the worker waits for it).
    Unreachable = redis.exceptions.ConnectionError
    #: Any failure of the queue's Redis.
    Failed = redis.exceptions.RedisError

    def __init__(self, url: str, name: str = QUEUE_NAME) -> None:
        self.url = url
        self.name = name
        self._queue = None
        self._lock = threading.Lock()

    def get(self):
        if self._queue is None:
            with self._lock:
                if self._queue is None:
                    from rq import Queue

                    self._queue = Queue(self.name, connection=rq_client(self.url))
        return self._queue

    def connection(self) -> Any:
        return self.get().connection

    def claim_slot(self, job: str, slot: int, seconds: int) -> bool:
        """True for the one process that claims `job`'s time `slot` first (SET NX, kept `seconds`)."""
        return bool(self.connection().set(slot_key(job, slot), 1, nx=True, ex=seconds))

    def close(self) -> None:
        if self._queue is not None:
            try:
                self._queue.connection.close()
            except Exception:
                pass
