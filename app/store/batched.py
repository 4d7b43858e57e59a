"""Reads made together.

Under load, many requests of one process read one row each by key at the same moment (a claim
reads its purchase, a keyed refusal looks for its kept answer). One by one, each costs a SQL
round trip, a pooled connection (and, past the pool, a connection opened and closed), and a
turn of the event loop per step. Here one reader thread per process takes every key waiting and
fetches them with one query; each request waits only for its own answer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Most keys one query takes.
MAX_BATCH = 256


class Batched(Generic[K, V]):
    def __init__(self, fetch_many: Callable[[list[K]], dict[K, V]], name: str, max_batch: int = MAX_BATCH) -> None:
        self.fetch_many = fetch_many
        self.name = name
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[K, Future]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value of `key`, or None when there is none."""
        future: Future = Future()
        self._ensure_started()
        self._queue.put((key, future))
        return future.result()

    def _ensure_started(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    # Started lazily: in the process that serves requests (after gunicorn forks).
                    self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                found = self.fetch_many(list({key for key, _ in batch}))
            except Exception as error:
                for _, future in batch:
                    future.set_exception(error)
                continue
            except BaseException as error:  # an interrupt: answer the waiters, then stop
                for _, future in batch:
                    future.set_exception(error)
                raise
            for key, future in batch:
                future.set_result(found.get(key))
