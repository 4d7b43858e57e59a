"""Reads made together.

Under load, many requests of one process read one row each by key at the same moment (a claim
reads its purchase, a keyed refusal looks for its kept answer). One by one, each costs a SQL
round trip, a pooled connection (and, past the pool, a connection opened and closed), and a
turn of the event loop per step. Here one reader thread per process takes every key waiting and
fetches them with one query; each request waits only for its own answer.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Most keys one query takes.
MAX_BATCH = 256


class Answer:
    """An answer one thread sets and another waits for (a batched read's, a group commit's): a
    lock held from the start and released once the answer is set, the cheapest one-shot wait
    there is (one lock, where a Future makes a Condition and more; under gevent each of those is
    a Python object on every request). Set once; waited for any number of times."""

    __slots__ = ("_ready", "_set", "value", "error")

    def __init__(self) -> None:
        self._ready = threading.Lock()
        self._ready.acquire()
        self._set = False
        self.value = None
        self.error: BaseException | None = None

    def set(self, value=None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self._set = True
        self._ready.release()

    def done(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None):
        """The value, or the error raised; TimeoutError when not set within `timeout` s."""
        if not self._set:
            if not self._ready.acquire(timeout=-1 if timeout is None else timeout):
                raise TimeoutError("no answer yet")
            self._ready.release()  # for the next wait
        if self.error is not None:
            raise self.error
        return self.value


class Batched(Generic[K, V]):
    def __init__(self, fetch_many: Callable[[list[K]], dict[K, V]], name: str, max_batch: int = MAX_BATCH) -> None:
        self.fetch_many = fetch_many
        self.name = name
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[K, Answer]] = queue.SimpleQueue()
        #: The process whose reader thread is running, if any: none after a fork (gunicorn's
        #: workers), and none once the thread stopped (an interrupt ends it).
        self._running_in: int | None = None
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value of `key`, or None when there is none."""
        answer = Answer()
        if self._running_in != os.getpid():
            self._start()
        self._queue.put((key, answer))
        return answer.wait()

    def _start(self) -> None:
        with self._lock:
            if self._running_in != os.getpid():
                # Started lazily: in the process that serves requests (after gunicorn forks).
                self._running_in = os.getpid()
                threading.Thread(target=self._run, name=self.name, daemon=True).start()

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._running_in = None

    def _serve(self) -> None:
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
                for _, answer in batch:
                    answer.set(error=error)
                continue
            except BaseException as error:  # an interrupt: answer the waiters, then stop
                self._running_in = None  # first: a read after these answers starts another reader
                for _, answer in batch:
                    answer.set(error=error)
                raise
            for key, answer in batch:
                answer.set(found.get(key))
