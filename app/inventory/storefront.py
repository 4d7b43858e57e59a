"""What a storefront may see of a public deal, read without the account's secret, and the live
feed of it that the public stream (GET /v1/public/deals/:id/stream) sends to browsers.

`Storefront.show(deal_id)` reads a public deal once. `Storefront.listen(deal_id)` registers a
listener of the deal's feed; `Listener.next(timeout)` waits for the deal's next state.

How the feed scales (docs/storefront.md):

* **One source per process.** One poller (a thread; a greenlet under gunicorn's gevent worker,
  which patches `threading`) reads the live numbers of the deals that have listeners in this
  process, all of them in one pipelined Redis round trip (`LiveStock.snapshots`), every
  `interval` seconds (0.1). A deal whose storefront state differs from the last one published
  gets the new state, and its listeners all wake on one Event. The cost is one snapshot script
  per watched deal per interval per process, however many listeners a deal has; nothing on the
  write path knows the feed exists (a reserve publishes nothing).
* **Coalesced.** A state is published at most once per round, and a round starts `interval`
  after the previous one ended, so a deal's states are at least `interval` apart; a listener
  also keeps the states it returns that far apart (`gap`), and one that falls behind (a slow
  client) skips to the latest state: nothing queues up per listener.
* **Paced by delivery.** Each listener's write is a system call, so thousands of listeners of
  one deal cost a large share of a core per state. A deal's next state waits until 90% of its
  listeners took the last one, and then long enough that delivering states takes at most 30% of
  the process's time (`_Channel.due`): while a flash sale changes the deal all the time, a
  process with 5,000 listeners sends a state every few hundred ms and keeps the rest of its time
  for the buyers; with a few hundred, every 100 ms.
* **What is not a live number** (title, price, the window, public) is read from SQL when a
  deal's first listener arrives, when its live state was reloaded (a PATCH of those fields drops
  it) and every `refresh` seconds (5) for all watched deals: a deal made private ends its
  listeners within that time.
* **Ending.** A listener ends (`FeedEnded`) when its deal stops being public or the feed closes
  (the worker is shutting down). The poller exits when the last listener of the process leaves
  and starts again with the next one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from datetime import datetime

from app.core.errors import Unavailable
from app.core.timeutil import to_ms
from app.store.models import Deal

from .deals import DealService, DealView
from .errors import DealNotFound
from .stock import LiveStock, Snapshot

log = logging.getLogger(__name__)

#: Seconds between the end of one poll of the watched deals and the start of the next: the
#: most a change waits before it is read, and the least time between two states of a deal.
FEED_INTERVAL_SECONDS = 0.1
#: Seconds between re-reads of the watched deals' rows (title, price, window, public).
FEED_REFRESH_SECONDS = 5.0
#: After a failed poll (Redis or SQL down), the poller waits this long before the next one.
FEED_RETRY_SECONDS = 1.0
#: The most closing the feed waits for the poller's round under way (a read of a store that
#: is down ends at its client's timeout).
CLOSE_WAIT_SECONDS = 5.0
#: Delivering a state costs a write per listener, mostly the kernel's: 5,000 listeners take a
#: large share of a core. So a deal's next state waits until this share of its listeners took
#: the last one...
DELIVERED_SHARE = 0.9
#: ...and then long enough that delivering takes at most this share of the process's time
#: (the rest is the API's): with 5,000 listeners on a busy process the states of a deal come a
#: few hundred ms apart instead of 100 ms. A listener always gets the latest. A smaller share
#: gives the buyers more and the listeners later news (docs/bench/README.md, streams).
DELIVERY_BUDGET = 0.3
#: The most a state waits for the last one to be delivered (slow clients hold the others up no
#: longer than this).
DELIVERY_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class PublicDeal:
    """What a storefront shows: nothing about holds, customers or the account."""

    id: int
    title: str
    #: Minor units (the deal's price_per_unit).
    price: int
    currency: str
    quantity: int
    available: int
    sold_out: bool
    starts_at: datetime | None
    ends_at: datetime | None
    #: Inside the sale window at the time it was read.
    on_sale: bool


def public_deal(view: DealView, now: datetime) -> PublicDeal:
    available = view.available
    return PublicDeal(
        id=view.id,
        title=view.title,
        price=view.price_per_unit,
        currency=view.currency,
        quantity=view.quantity,
        available=available,
        sold_out=available <= 0,
        starts_at=view.starts_at,
        ends_at=view.ends_at,
        on_sale=view.on_sale_at(now),
    )


class FeedEnded(Exception):
    """The deal stopped being public, or the feed closed (the process is shutting down): the
    listener's stream ends (a client that connects again gets the deal, or a 404)."""


#: A channel's state once its deal stopped being public.
_ENDED = object()


class _Channel:
    """One watched deal of this process: its latest state and the Event its listeners wait on
    (replaced by a fresh one at each publish, then set: every waiter wakes once), and how long
    its last state took to reach its listeners."""

    __slots__ = (
        "deal_id",
        "listeners",
        "current",
        "loading",
        "deal",
        "gen",
        "published_at",
        "quorum",
        "taken",
        "delivery",
    )

    def __init__(self, deal_id: int) -> None:
        self.deal_id = deal_id
        self.listeners = 0
        #: (state, signal): read together by listeners, replaced together by `publish`.
        self.current: tuple[object, threading.Event] = (None, threading.Event())
        #: Held while the first state is read (the listeners that arrive meanwhile wait).
        self.loading = threading.Lock()
        self.deal: Deal | None = None
        self.gen: str | None = None
        #: When the current state was published (monotonic), how many listeners make it
        #: delivered (DELIVERED_SHARE of them), how many have taken it, and the seconds it took
        #: them (None until then).
        self.published_at = float("-inf")
        self.quorum = 0
        self.taken = 0
        self.delivery: float | None = 0.0

    @property
    def state(self) -> object:
        return self.current[0]

    def publish(self, state: object) -> None:
        _, signal = self.current
        self.published_at = time.monotonic()
        self.quorum = max(1, math.ceil(self.listeners * DELIVERED_SHARE))
        self.taken = 0
        self.delivery = None
        self.current = (state, threading.Event())
        signal.set()

    def took(self, state: object) -> None:
        """A listener took `state` (to write it to its client). Counted without a lock: under
        gevent nothing interleaves here, and with threads a lost count only delays the next
        state by at most DELIVERY_WAIT_SECONDS."""
        if state is self.current[0]:
            self.taken += 1
            if self.taken == self.quorum:
                self.delivery = time.monotonic() - self.published_at

    def due(self, now: float, gap: float, wait: float) -> bool:
        """Whether a new state may be published now: `gap` after the last one, once that one has
        reached its listeners (or `wait` passed: some clients are slow), and late enough that
        delivering states takes at most DELIVERY_BUDGET of the process's time."""
        since = now - self.published_at
        if self.delivery is None:
            return since >= max(gap, wait)
        return since >= max(gap, self.delivery / DELIVERED_SHARE / DELIVERY_BUDGET)

    def wake(self) -> None:
        self.current[1].set()


class Listener:
    """One stream's view of a deal's feed. Not shared between threads."""

    def __init__(self, feed: LiveFeed, channel: _Channel) -> None:
        self._feed = feed
        self._channel = channel
        self._seen: object = None
        self._sent_at = float("-inf")
        self._closed = False

    @property
    def deal_id(self) -> int:
        return self._channel.deal_id

    def next(self, timeout: float) -> PublicDeal | None:
        """The deal's state, when it is one this listener has not had yet (the first call
        returns the current one), at most one per `gap`; None when nothing changed within
        `timeout` seconds. Raises FeedEnded when the deal stopped being public or the feed closed."""
        deadline = time.monotonic() + timeout
        while True:
            state, signal = self._channel.current
            if state is _ENDED or self._feed.closed or self._closed:
                raise FeedEnded("the deal's feed ended")
            if state is not None and state is not self._seen:
                pause = self._sent_at + self._feed.gap - time.monotonic()
                if pause > 0:
                    # Too soon after the last one: wait, then take whatever is latest by then.
                    time.sleep(pause)
                    continue
                self._seen = state
                self._sent_at = time.monotonic()
                self._channel.took(state)
                return state  # type: ignore[return-value]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            signal.wait(left)

    def close(self) -> None:
        """Leave the feed (idempotent)."""
        if not self._closed:
            self._closed = True
            self._feed._leave(self._channel)


@dataclass(eq=False)
class LiveFeed:
    """The per-process fan-out described in the module's docstring."""

    deals: DealService
    stock: LiveStock
    clock: Callable[[], datetime]
    _: KW_ONLY
    interval: float = FEED_INTERVAL_SECONDS
    refresh: float = FEED_REFRESH_SECONDS
    retry: float = FEED_RETRY_SECONDS
    #: The least time between two states of a deal, and between two a listener returns.
    gap: float = FEED_INTERVAL_SECONDS
    delivery_wait: float = DELIVERY_WAIT_SECONDS

    def __post_init__(self) -> None:
        self.closed = False
        self._channels: dict[int, _Channel] = {}
        self._lock = threading.Lock()
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self._next_refresh = time.monotonic() + self.refresh
        self._failing_since: float | None = None

    # -- listeners ----------------------------------------------------------------------------

    def listen(self, deal_id: int) -> Listener:
        """A listener of a public deal's feed; DealNotFound for any other deal. The deal's first
        listener in this process reads it (SQL and Redis); the others share what the poller reads."""
        if self.closed:
            raise Unavailable("this process is shutting down; connect again")
        with self._lock:
            channel = self._channels.get(deal_id)
            if channel is None:
                channel = self._channels[deal_id] = _Channel(deal_id)
            channel.listeners += 1
            if self._poller is None:
                self._stop.clear()
                self._poller = threading.Thread(target=self._run, name="storefront-feed", daemon=True)
                self._poller.start()
        try:
            with channel.loading:
                if channel.state is _ENDED:  # ended while we joined it
                    raise DealNotFound()
                if channel.state is None:
                    now = self.clock()
                    view = self.deals.public_view(deal_id, now)
                    channel.deal, channel.gen = view.deal, view.live.gen
                    channel.publish(public_deal(view, now))
        except BaseException:
            self._leave(channel)
            raise
        return Listener(self, channel)

    def _leave(self, channel: _Channel) -> None:
        with self._lock:
            channel.listeners -= 1
            if channel.listeners <= 0 and self._channels.get(channel.deal_id) is channel:
                del self._channels[channel.deal_id]

    def listening(self) -> int:
        """How many listeners this process has (all deals)."""
        with self._lock:
            return sum(channel.listeners for channel in self._channels.values())

    def close(self) -> None:
        """End every listener and stop the poller (the worker is shutting down). Returns when the
        poller's round under way has ended: the stores it reads are closed next (Services.close),
        and a connection still checked out then would be left open."""
        self.closed = True
        self._stop.set()
        with self._lock:
            channels = list(self._channels.values())
            poller = self._poller
        for channel in channels:
            channel.wake()
        if poller is not None and poller is not threading.current_thread():
            poller.join(CLOSE_WAIT_SECONDS)

    # -- the poller ---------------------------------------------------------------------------

    def _run(self) -> None:
        # A deal's first listener has just read it: the first round can wait an interval too.
        wait = self.interval
        while True:
            self._stop.wait(wait)
            with self._lock:
                if not self._channels or self.closed:
                    self._poller = None
                    return
            try:
                self.poll()
                wait = self.interval
            except Exception as error:  # Redis or SQL away: the streams stay open, the poller retries
                wait = self.retry
                now = time.monotonic()
                if self._failing_since is None:
                    self._failing_since = now
                    log.warning("storefront feed: cannot read the watched deals", extra={"error": str(error)[:200]})
            else:
                if self._failing_since is not None:
                    log.warning(
                        "storefront feed: reading again", extra={"after_s": time.monotonic() - self._failing_since}
                    )
                    self._failing_since = None

    def poll(self) -> int:
        """One round: the live numbers of every watched deal in one round trip, their rows where
        needed; publish each state that changed. Returns how many were published."""
        with self._lock:
            channels = [c for c in self._channels.values() if c.state is not None and c.state is not _ENDED]
        if not channels:
            return 0
        now = self.clock()
        snapshots = self.stock.snapshots([c.deal_id for c in channels], to_ms(now))
        refresh_all = time.monotonic() >= self._next_refresh
        if refresh_all:
            self._next_refresh = time.monotonic() + self.refresh
        stale = [
            c
            for c in channels
            if refresh_all or snapshots[c.deal_id] is None or snapshots[c.deal_id].gen != c.gen  # type: ignore[union-attr]
        ]
        rows = self.deals.public_rows([c.deal_id for c in stale]) if stale else {}
        published = 0
        for channel in channels:
            if channel in stale:
                row = rows.get(channel.deal_id)
                if row is None:  # deleted, or no longer public
                    self._end(channel)
                    continue
                channel.deal = row
            snapshot = snapshots[channel.deal_id] or self._reload(channel, now)
            if snapshot is None:
                continue
            channel.gen = snapshot.gen
            state = public_deal(DealView(channel.deal, snapshot), now)
            if state != channel.state and channel.due(time.monotonic(), self.gap, self.delivery_wait):
                channel.publish(state)
                published += 1
        return published

    def _reload(self, channel: _Channel, now: datetime) -> Snapshot | None:
        """A watched deal whose live state is not in Redis (dropped by a PATCH, or Redis lost
        it): load it again, as any read does."""
        try:
            view = self.deals.public_view(channel.deal_id, now)
        except DealNotFound:
            self._end(channel)
            return None
        channel.deal = view.deal
        return view.live

    def _end(self, channel: _Channel) -> None:
        with self._lock:
            if self._channels.get(channel.deal_id) is channel:
                del self._channels[channel.deal_id]
        channel.publish(_ENDED)


@dataclass(eq=False)
class Storefront:
    """Reads for storefronts: a public deal, once or as a feed."""

    deals: DealService
    feed: LiveFeed

    def show(self, deal_id: int, now: datetime | None = None) -> PublicDeal:
        now = now or self.deals.clock()
        return public_deal(self.deals.public_view(deal_id, now), now)

    def listen(self, deal_id: int) -> Listener:
        return self.feed.listen(deal_id)
