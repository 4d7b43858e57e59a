"""Per-account limits on writes, counted in Redis with `limits` (flask-limiter's engine).

A runaway client must not starve everyone else. The limit is per account (identified by the
secret it presents, through the same cached lookup as authentication) and counts POST, PUT,
PATCH and DELETE under /v1 and /v3 in one budget, whatever their answer (a write whose body is
refused counts too); reads are not limited. Over the limit: 429 in the API's error shape with
Retry-After.

flask-limiter itself cost three Redis round trips and about half a millisecond of Python per
write here (its per-request context, exemption scopes, header injection), a third of the
sold-out answer's whole budget. Its `limits` library alone keeps the fixed-window counter in
Redis, one counter per window of the clock (each minute, for a per-minute limit), so that every
process counts the same window. Each process takes the budget in leases of 1% of the limit
(`LEASE_FRACTION`): one round trip per lease instead of one per write. So the count is exact for
small limits (a lease of 1) and, for large ones, off by at most one unused lease per process and
window. If Redis cannot count, the request goes on (and meets the same Redis on its way, which
answers 503 if it is really down).

The public API's one write, a storefront's waitlist join (POST /v1/public/deals/:id/waitlist),
carries no secret: it is counted per account of the deal (`admit_storefront_write`), with the
same limit but in a budget of its own (`storefront:<account id>`). So all the storefronts of an
account together join at most RATE_LIMIT_WRITES, and a stranger flooding a shop's waitlist form
can never spend the budget the account's own API writes (its reserves, in the middle of a sale)
need.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from flask import Flask, current_app, request
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from app.web.api.auth import presented_account
from app.web.errors import ApiError
from app.wiring import limits_storage_uri

log = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LEASE_FRACTION = 100


def key_of_account(account_id: int) -> str:
    return f"account:{account_id}"


def key_of_storefronts(account_id: int) -> str:
    return f"storefront:{account_id}"


def account_key() -> str:
    account = presented_account()
    if account is not None:
        return key_of_account(account.id)
    return f"ip:{request.remote_addr}"


class WriteLimit:
    def __init__(self, spec: str, redis_url: str) -> None:
        self.item = parse(spec)
        self.lease = max(1, self.item.amount // LEASE_FRACTION)
        self.seconds = self.item.get_expiry()
        storage = storage_from_string(redis_url, socket_connect_timeout=2, socket_timeout=2, key_prefix="oe:rate")
        self.strategy = FixedWindowRateLimiter(storage)
        self._leases: dict[str, tuple[int, int]] = {}  # key -> (window, writes left in the lease)
        self._leasing: dict[str, threading.Lock] = {}  # key -> held while a thread takes a lease
        self._lock = threading.Lock()

    def check(self) -> None:
        """before_request of the API blueprints."""
        if request.method not in WRITE_METHODS:
            return
        if not self.admit(account_key()):
            raise self.refuse("this account")

    def refuse(self, whose: str) -> ApiError:
        return ApiError(
            429,
            "rate_limited",
            f"Too many writes: {whose} may make {self.item}.",
            headers={"Retry-After": str(self.retry_after())},
        )

    def admit(self, key: str) -> bool:
        """Count one write of `key` (an account or an address); False when it is over the limit."""
        if self._take(key, self._window()):
            return True
        # One thread per account takes the next lease; the others wait and use it. Without
        # this, every thread that found the lease empty took its own and all but one were
        # overwritten: 16 threads counted up to 16 writes per write and met a 429 at a tenth
        # of the limit.
        with self._lock:
            leasing = self._leasing.setdefault(key, threading.Lock())
        with leasing:
            # The window is read again after the wait: a writer held up past the top of the
            # window must not lease for the one that ended (its lease would replace the new
            # window's, and the next writer's would replace it back).
            window = self._window()
            if self._take(key, window):
                return True
            try:
                return self._lease(key, window)
            except Exception as error:  # counting is best effort; the write meets Redis itself next
                log.warning("cannot count the write against its limit", extra={"error": str(error)[:200]})
                return True

    def counting_refused_bodies(self, read: Callable[[], None]) -> Callable[[], None]:
        """`read` (read_body), where a write whose body it refuses (not JSON, too large) counts
        against the limit too: by the secret in the header or query, else by the caller's
        address. A client stuck sending broken writes is limited like any other writer."""

        def read_and_count_refusals() -> None:
            try:
                read()
            except Exception:
                self.check()  # over the limit: the 429 replaces the refusal
                raise

        return read_and_count_refusals

    def _window(self) -> int:
        """The clock's current window (its minute, for a per-minute limit): the same in every
        process, and part of the key counted in Redis, so all of them count the same window."""
        return int(time.time() // self.seconds)

    def _take(self, key: str, window: int) -> bool:
        """One write from this process's lease, when it has one left for this window."""
        with self._lock:
            leased_window, left = self._leases.get(key, (-1, 0))
            if leased_window == window and left > 0:
                self._leases[key] = (window, left - 1)
                return True
        return False

    def _lease(self, key: str, window: int) -> bool:
        """Take the next lease from Redis, or a single write when a whole lease no longer fits."""
        for size in (self.lease, 1) if self.lease > 1 else (1,):
            if self.strategy.hit(self.item, "writes", key, str(window), cost=size):
                with self._lock:
                    if len(self._leases) > 100_000:
                        self._leases.clear()
                        self._leasing.clear()
                    self._leases[key] = (window, size - 1)
                return True
        return False

    def retry_after(self) -> int:
        """Seconds until the current window ends and the budget renews."""
        return max(1, math.ceil((self._window() + 1) * self.seconds - time.time()))


#: app.extensions key of the app's WriteLimit (None when writes are not limited).
EXTENSION = "offer_engine_write_limit"


def admit_storefront_write(account_id: int) -> None:
    """Count a storefront's write (a public waitlist join) against its deal's account's
    storefront budget; 429 when over it (see the module docstring)."""
    limit: WriteLimit | None = current_app.extensions.get(EXTENSION)
    if limit is not None and not limit.admit(key_of_storefronts(account_id)):
        raise limit.refuse("the storefronts of this deal's account")


def init_app(app: Flask, blueprints: list) -> WriteLimit | None:
    spec = app.config.get("RATE_LIMIT_WRITES", "")
    app.extensions[EXTENSION] = None
    if not spec or spec.lower() in ("off", "none", "0"):
        return None
    limit = WriteLimit(spec, limits_storage_uri(app.config))
    app.extensions[EXTENSION] = limit
    for blueprint in blueprints:
        # After the body is read (a secret may be in it), before authentication: a flood of bad
        # secrets is limited too (by address).
        hooks = app.before_request_funcs.setdefault(blueprint.name, [])
        at = hooks.index(blueprint.read_body)
        hooks[at] = limit.counting_refused_bodies(blueprint.read_body)
        hooks.insert(at + 1, limit.check)
    return limit
