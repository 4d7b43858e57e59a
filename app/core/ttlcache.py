"""The one time-limited cache: values remembered for `ttl` seconds of a clock the caller reads.

Every call is given `now` (from a monotonic clock in production, a fixed one in tests), so the
cache itself never reads a clock. It holds at most `max_entries`; when full it starts afresh:
its entries are a few seconds' worth of lookups, and forgetting one costs one lookup.
Readers take no lock (one dict read); writers take one, so that clearing and adding don't race.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: What `get` returns for a key it does not know (or knew too long ago), unless told otherwise.
MISSING: Any = object()


class TTLCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K, now: float, default: Any = MISSING) -> V | Any:
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        return default

    def fetch(self, key: K, now: float, load: Callable[[], V]) -> V:
        """The value of `key`, from `load()` when not known (and then remembered)."""
        found = self.get(key, now)
        if found is MISSING:
            found = load()
            self.put(key, found, now)
        return found

    def put(self, key: K, value: V, now: float) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (now + self.ttl, value)

    def forget(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
