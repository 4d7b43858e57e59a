"""Live stock and holds in Redis: the only code that changes them, each change one Lua script.

Times are integer milliseconds since the epoch, passed in by the caller so tests fix the clock.
Connection problems surface as `Unavailable`; every script outcome other than OK surfaces as
one of the exceptions in `errors.py`.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions

from app.core.errors import RequestInProgress, Unavailable
from app.core.timeutil import from_ms
from app.core.timeutil import now_ms as wall_ms
from app.core.ttlcache import TTLCache
from app.store.batched import Batched

from . import keys as K
from .errors import (
    DealNotFound,
    InconsistentState,
    NotHeld,
    NotLoaded,
    NotStarted,
    OfferUnrecorded,
    OverPurchaseLimit,
    OverUserLimit,
    PriceChanged,
    SaleEnded,
    SoldOut,
)
from .replication import NotReplicated, ReplicatedWrites
from .scripts import Code, Scripts, UnknownReply, code_of

#: How many ended holds a reserve or buy returns to stock before it looks at the stock.
RECLAIM_LIMIT = 100

#: "Redis cannot answer now": a lost connection, or a cluster between masters (a failover, a
#: slot with no master, a server still loading). Each becomes a 503 with Retry-After.
REDIS_DOWN = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,  # CLUSTERDOWN, MASTERDOWN
    redis.exceptions.RedisClusterException,  # no node serves the slot (yet)
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,  # MOVED / ASK still unresolved after the client's own retries
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,  # a demoted master, until the client sees the new one
)


def _took(reply: Any) -> bool:
    """A taking script's reply that changed the live state: its take."""
    return code_of(reply) is Code.OK


def _any(_reply: Any) -> bool:
    """Any reply of a script that may have written (a noted refusal, a dropped deal)."""
    return True


def _redis_errors(method):
    """Turn "cannot reach Redis" (or "its replicas did not confirm") into the domain's
    Unavailable."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (*REDIS_DOWN, NotReplicated) as error:
            raise Unavailable(f"redis: {error}") from error

    return wrapper


@dataclass(frozen=True)
class Order:
    """What one attempt (`nonce`) asks of a deal's stock: `units` for the purchase `token`,
    for customer `user_id` ('' for none)."""

    deal_id: int
    account_id: int
    token: str
    nonce: str
    units: int
    user_id: str = ""
    #: When the request this attempt belongs to began (ms), for a request others may retry: a
    #: refusal given since then to a request of the same name refuses this attempt too
    #: (lua/lib.lua answered_since). Its name is `token` for a reserve or a purchase (derived
    #: from an Idempotency-Key or a v3 transaction id; 0: made for this request alone) and
    #: `claim_key`, its key's token, for a claim (every claim of a purchase has its token).
    since_ms: int = 0
    claim_key: str = ""

    @property
    def refusal_noted(self) -> bool:
        """Other requests may share this order's name (a key's or a transaction id's token),
        so its refusal is noted for them (lua/lib.lua note_refusal); otherwise its token is
        fresh, made for this request alone."""
        return self.since_ms > 0

    def argv(self) -> list:
        """The scripts' first arguments: account, token, nonce, units, customer."""
        return [self.account_id, self.token, self.nonce, self.units, self.user_id]

    def taken(self, gen: str, units: int, **fields: Any) -> Taken:
        """What the order took, as its script reported it."""
        return Taken(self.deal_id, self.account_id, self.token, self.nonce, gen, units, self.user_id, **fields)


@dataclass(frozen=True)
class Taken:
    """Units one attempt took from a deal's stock (a hold, or sold units with a mark), as its
    script reported them. `token` and `nonce` name the take: only this attempt can undo it
    (`LiveStock.give_back`), until another attempt adopts it."""

    deal_id: int
    account_id: int
    token: str
    nonce: str
    gen: str
    units: int
    user_id: str = ""
    #: A claim's units came from the purchase's hold (not from stock).
    from_hold: bool = False
    #: The hold ends before every other hold of the deal: the sweep index must learn about it.
    needs_index: bool = False
    #: When the hold ends (reserve), in ms.
    ends_ms: int = 0
    #: The deal as the script saw it: price and currency (reserve, buy), title and the sku a
    #: purchase line shows (buy, claim). The hot paths need no SQL read of the deal.
    price: int | None = None
    currency: str | None = None
    title: str | None = None
    label: str | None = None
    #: Units left in stock right after this take, when the take changed them (0: it sold the
    #: deal out); None when the stock did not move.
    available_after: int | None = None
    #: This attempt took the take over from another one (`LiveStock.adopt`). An adopted take is
    #: never given back by its adopter: the attempt that made it may have committed it.
    adopted: bool = False


@dataclass(frozen=True)
class Found:
    """What the token already had on the deal when a taking script ran: a hold or a mark made by
    an attempt (`nonce`, at `born_ms`) that may still be running, may have committed, or may
    have died. Nonce '' is a hold loaded from SQL (committed)."""

    deal_id: int
    token: str
    gen: str
    kind: str  # "hold" | "mark"
    units: int
    user_id: str
    nonce: str
    born_ms: int
    from_hold: bool
    ends_ms: int
    available: int
    price: int | None
    currency: str | None
    title: str | None
    label: str | None
    #: The customer a hold was reserved for ('' for none).
    holder: str = ""

    def as_taken(self, account_id: int, nonce: str | None = None) -> Taken:
        """The take this is: for the attempt that made it (its script ran twice), or, with
        `nonce`, for the attempt that adopted it."""
        return Taken(
            self.deal_id,
            account_id,
            self.token,
            nonce or self.nonce,
            self.gen,
            self.units,
            self.user_id,
            from_hold=self.from_hold and self.kind == "mark",
            needs_index=self.kind == "hold",
            ends_ms=self.ends_ms,
            price=self.price,
            currency=self.currency,
            title=self.title,
            label=self.label,
            adopted=nonce is not None,
        )


def _found(deal_id: int, token: str, reply: list) -> Found:
    """lib.lua `found_reply`."""
    price = reply[10]
    return Found(
        deal_id=deal_id,
        token=token,
        gen=reply[1],
        kind=reply[2],
        units=int(reply[3]),
        user_id=reply[4],
        nonce=reply[5],
        born_ms=int(reply[6]),
        from_hold=int(reply[7]) == 1,
        ends_ms=int(reply[8]),
        available=int(reply[9]),
        price=None if price in (None, "") else int(price),
        currency=reply[11],
        title=reply[12],
        label=reply[13],
        holder=reply[14] or "",
    )


@dataclass(frozen=True)
class Ask:
    """A taking script for one order, not yet run (`LiveStock.reserving`, `buying`,
    `claiming`): `LiveStock.take` runs one, `take_many` several in one round trip."""

    order: Order
    script: str
    args: list
    now_ms: int

    @property
    def memo(self) -> bool:
        """The sold-out memo may refuse it first: a reserve or a buy (a claim sells its hold)."""
        return self.script != "claim"


def _reserved(rest: list) -> dict[str, Any]:
    """reserve.lua's OK reply after {OK, gen, available_after}: needs_index, price, currency, ends."""
    return {"needs_index": bool(int(rest[0])), "price": int(rest[1]), "currency": rest[2], "ends_ms": int(rest[3])}


def _bought(rest: list) -> dict[str, Any]:
    """buy.lua's OK reply after {OK, gen, available_after}: price, currency, title, label."""
    return {"price": int(rest[0]), "currency": rest[1], "title": rest[2], "label": rest[3]}


#: What the OK reply of reserve and buy holds after {OK, gen, available_after}.
_FIELDS: dict[str, Callable[[list], dict[str, Any]]] = {"reserve": _reserved, "buy": _bought}


@dataclass(frozen=True)
class Offer:
    """A unit offered to a waiting customer, as a hold of its own (lua/lib.lua return_units)."""

    deal_id: int
    entry_id: int
    token: str
    ends_ms: int
    user_id: str
    price: int
    currency: str
    #: The item as `offered` holds it (to trim exactly what was recorded).
    item: str

    @classmethod
    def parse(cls, deal_id: int, item: str) -> Offer:
        _, entry_id, token, ends_ms, user_id, price, currency = fields_of(item)
        return cls(deal_id, int(entry_id), token, int(ends_ms), user_id, int(price), currency, item)


def fields_of(value: str) -> list[str]:
    """lua/lib.lua `split`: the fields of a value written by `join`."""
    return [part.replace("%7C", "|").replace("%25", "%") for part in value.split("|")]


def joined(*parts: object) -> str:
    """lua/lib.lua `join`: one value of several fields, a field's own `|` escaped."""
    return "|".join(str(part).replace("%", "%25").replace("|", "%7C") for part in parts)


@dataclass(frozen=True)
class Snapshot:
    deal_id: int
    quantity: int
    available: int
    reserved: int
    sold: int
    holds: int
    account_id: int
    gen: str


@dataclass(frozen=True)
class SweepResult:
    holds: int
    units: int
    next_end_ms: int


@dataclass(frozen=True)
class DealState:
    """What a deal's live state must be, as computed from SQL (see rebuild.py)."""

    deal_id: int
    account_id: int
    quantity: int
    sold: int
    price: int
    currency: str
    max_per_purchase: int
    max_per_user: int
    #: (token, units, ends_at_ms, customer or '', waitlist entry id or None)
    holds: tuple[tuple[str, int, int, str, int | None], ...]
    users: tuple[tuple[str, int], ...]  # (user_id, units sold to them)
    title: str = ""
    #: The sku a purchase line of this deal shows: its sku, or its id when it has none.
    label: str = ""
    #: The sale window, ms (0: open on that side).
    starts_ms: int = 0
    ends_ms: int = 0
    #: (entry id, user_id) of the customers waiting, first first.
    waiting: tuple[tuple[int, str], ...] = ()

    @property
    def reserved(self) -> int:
        return sum(hold[1] for hold in self.holds)

    @property
    def available(self) -> int:
        return self.quantity - self.sold - self.reserved


class SoldOutMemo:
    """Deals this process has just seen sold out, so that the next buyers' 409 needs no Redis
    round trip. During a flash sale almost every request is such a 409.

    Only ever answers "sold out": a stale entry can refuse a buyer for at most `ttl_ms` after
    units came back (a release, an expiry, a bigger quantity), never sell a unit that is not
    there. This process forgets an entry at once when it gives units back itself; other
    processes' entries run out. Keyed by deal, holding the account that owns it, and set only
    after the script checked that the account owns the deal, so it never answers for another
    account's deal id. Its clock is monotonic (a step of the wall clock must not stretch an
    entry); a test gives its own.
    """

    def __init__(self, ttl_ms: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl_ms / 1000
        self.clock = clock
        self._owners: TTLCache[int, int] = TTLCache(self.ttl)

    def knows_sold_out(self, deal_id: int, account_id: int) -> bool:
        return self._owners.get(deal_id, self.clock()) == account_id

    def remember(self, deal_id: int, account_id: int | None) -> None:
        if self.ttl > 0 and account_id is not None:
            self._owners.put(deal_id, account_id, self.clock())

    def forget(self, deal_id: int) -> None:
        self._owners.forget(deal_id)


class LiveStock:
    def __init__(
        self,
        client: Any,
        reclaim_limit: int = RECLAIM_LIMIT,
        sold_out_ttl_ms: int = 0,
        *,
        min_replicas: int = 0,
        replica_wait_ms: int = 500,
        offer_ms: int = 600_000,
    ) -> None:
        self.client = client
        #: How long a waitlist offer holds its unit.
        self.offer_ms = offer_ms
        self.scripts = Scripts(client)
        self.replicated = (
            ReplicatedWrites(client, min_replicas=min_replicas, wait_ms=replica_wait_ms) if min_replicas else None
        )
        self.reclaim_limit = reclaim_limit
        self.sold_out = SoldOutMemo(sold_out_ttl_ms)
        # In a flash sale every keyed write asks whether its token holds anything: together.
        self._held: Batched[tuple[int, str], bool] = Batched(self._held_many, "held-reads")

    # -- taking stock ---------------------------------------------------------------------
    # Each taking script first looks for what the token already has: a second run of the same
    # call (a client library re-sends a command after a connection error), or a retry of the
    # same request, finds its take instead of taking again (`Found`).

    def reserve(self, order: Order, now_ms: int, ends_at_ms: int) -> Taken | Found:
        """Hold the order's units for its token; held for its customer when it names one
        (counted against the deal's max_per_user, and claimable by that customer only)."""
        return self.take(self.reserving(order, now_ms, ends_at_ms))

    def buy(self, order: Order, now_ms: int, expected_price: int | None = None) -> Taken | Found:
        """Sell the order's units outright (refused with PriceChanged when `expected_price`
        is not the deal's)."""
        return self.take(self.buying(order, now_ms, expected_price))

    def claim(self, order: Order, now_ms: int) -> Taken | Found:
        """Sell what the order's token holds to the order's customer; the order's `units` are
        what the purchase holds, taken from stock when its hold is gone."""
        return self.take(self.claiming(order, now_ms))

    def reserving(self, order: Order, now_ms: int, ends_at_ms: int) -> Ask:
        rest = [now_ms, ends_at_ms, self.reclaim_limit, order.user_id, order.since_ms]
        return Ask(order, "reserve", [*order.argv()[:4], *rest], now_ms)

    def buying(self, order: Order, now_ms: int, expected_price: int | None = None) -> Ask:
        expected = "" if expected_price is None else expected_price
        rest = [order.user_id, expected, now_ms, self.reclaim_limit, order.since_ms]
        return Ask(order, "buy", [*order.argv()[:4], *rest], now_ms)

    def claiming(self, order: Order, now_ms: int) -> Ask:
        return Ask(order, "claim", [*order.argv(), now_ms, order.since_ms, order.claim_key], now_ms)

    @_redis_errors
    def take(self, ask: Ask) -> Taken | Found:
        """Run a taking script, unless the sold-out memo refuses it first: the take, or what
        the token already had; raises the refusal."""
        self._refuse_from_memory(ask)
        return self._read(ask, self._write_ask(ask))

    @_redis_errors
    def take_many(self, asks: Sequence[Ask]) -> list[Taken | Found | Exception | None]:
        """Taking scripts on distinct deals, in one round trip (one by one when the replicas must
        acknowledge each): for each, what `take` returns or raises. When the sold-out memo
        refuses one, nothing runs: that one's refusal, and None for the others. A lost reply
        raises, as for one take: what ran holds until its hold ends or the reconciler."""
        for at, ask in enumerate(asks):
            try:
                self._refuse_from_memory(ask)
            except SoldOut as refusal:
                return [refusal if other == at else None for other in range(len(asks))]
        if self.replicated is not None:
            replies: list[Any] = []
            for ask in asks:
                try:
                    replies.append(self._write_ask(ask))
                except (*REDIS_DOWN, NotReplicated) as error:
                    replies.append(Unavailable(f"redis: {error}"))
        else:

            def queue(pipe):
                for ask in asks:
                    self.scripts(ask.script, list(K.deal_keys(ask.order.deal_id)), ask.args, client=pipe)

            replies = self._pipelined(queue)
        results: list[Taken | Found | Exception | None] = []
        for ask, reply in zip(asks, replies, strict=True):
            try:
                results.append(reply if isinstance(reply, Exception) else self._read(ask, reply))
            except Exception as error:  # noqa: BLE001 (the caller raises the first, in order)
                results.append(error)
        return results

    @_redis_errors
    def adopt(self, found: Found, nonce: str, now_ms: int, user_id: str = "") -> bool:
        """Make `found` this attempt's take (`nonce`), for customer `user_id` ('' for any).
        False when it is gone, or another attempt adopted it first; RequestInProgress when it
        is another customer's claim (it may yet commit; once it died, the reconciler drops it)."""
        reply = self._write(found.deal_id, "adopt", [found.token, found.nonce, nonce, now_ms, user_id or ""])
        code = code_of(reply)
        if code is Code.OK:
            return True
        if code in (Code.NOT_HELD, Code.NOT_OWNER):
            return False
        if code is Code.OTHER_USER:
            raise RequestInProgress("another customer's claim of this purchase is still running; retry shortly")
        raise self._failure(code, reply)

    @_redis_errors
    def extend(self, deal_id: int, token: str, now_ms: int, ends_at_ms: int) -> tuple[str, int]:
        """(generation, the hold's end in ms)."""
        reply = self._write(deal_id, "extend", [token, now_ms, ends_at_ms])
        code = code_of(reply)
        if code is Code.OK:
            return reply[1], int(reply[2])
        raise self._failure(code, reply)

    # -- giving stock back ----------------------------------------------------------------

    @_redis_errors
    def give_back(self, deal_id: int, token: str, nonce: str, now_ms: int) -> int:
        """Undo the take of attempt `nonce` on `token`, if it still owns it; returns the units
        given back (0: nothing of its own was left)."""
        self.sold_out.forget(deal_id)
        reply = self._write(deal_id, "give_back", [token, nonce, now_ms])
        code = code_of(reply)
        if code is Code.NOT_OWNER:
            return 0
        if code is not Code.OK:
            raise UnknownReply(f"give_back replied {reply!r}")
        if int(reply[2]) >= 0:
            self.index(deal_id, int(reply[2]))
        return int(reply[1])

    @_redis_errors
    def release(self, deal_id: int, token: str, now_ms: int | None = None) -> int:
        """Units returned (to the waiting customers first): 0 when there was no hold (already
        released, expired, or not loaded)."""
        self.sold_out.forget(deal_id)
        reply = self.scripts("release", list(K.deal_keys(deal_id)), [token, now_ms or wall_ms()])
        code = code_of(reply)
        if code is Code.OK:
            return int(reply[1])
        if code in (Code.NOT_HELD, Code.NOT_LOADED):
            return 0
        raise UnknownReply(f"release replied {reply!r}")

    @_redis_errors
    def forget(self, deal_id: int, tokens: list[str]) -> int:
        """Drop the marks of purchases SQL shows committed; returns how many were dropped."""
        if not tokens:
            return 0
        return int(self.scripts("forget", list(K.deal_keys(deal_id)), tokens)[1])

    @_redis_errors
    def invalidate(self, deal_id: int) -> None:
        """Drop the deal's live state so that the next use rebuilds it from SQL (its refusals stay,
        as in a rebuild: what was answered stays answered)."""
        self.sold_out.forget(deal_id)
        keys = K.deal_keys(deal_id).live
        if self.replicated is None:
            self.client.delete(*keys)
        else:
            self.replicated.run(keys[0], ("DEL", *keys), wrote=_any)

    # -- reading --------------------------------------------------------------------------

    @_redis_errors
    def generation(self, deal_id: int) -> str | None:
        return self.client.hget(K.deal_keys(deal_id).inv, "gen")

    @_redis_errors
    def generations(self, deal_ids: list[int]) -> dict[int, str | None]:
        """The live state's generation of each deal, in one round trip."""
        if len(deal_ids) == 1:
            return {deal_ids[0]: self.generation(deal_ids[0])}  # no pipeline for one deal
        pipe = self.client.pipeline(transaction=False)
        for deal_id in deal_ids:
            pipe.hget(K.deal_keys(deal_id).inv, "gen")
        return dict(zip(deal_ids, pipe.execute(), strict=True))

    @_redis_errors
    def is_loaded(self, deal_id: int) -> bool:
        return bool(self.client.exists(K.deal_keys(deal_id).inv))

    @_redis_errors
    def snapshot(self, deal_id: int, now_ms: int) -> Snapshot:
        return self._snapshot(deal_id, self._snapshot_reply(deal_id, now_ms))

    @_redis_errors
    def snapshots(self, deal_ids: Iterable[int], now_ms: int) -> dict[int, Snapshot | None]:
        """Snapshots of many deals in one round trip; None for a deal not loaded."""
        deal_ids = list(deal_ids)

        def queue(pipe):
            for deal_id in deal_ids:
                self._snapshot_reply(deal_id, now_ms, pipe)

        out: dict[int, Snapshot | None] = {}
        for deal_id, reply in zip(deal_ids, self._pipelined(queue), strict=True):
            out[deal_id] = None if code_of(reply) is Code.NOT_LOADED else self._snapshot(deal_id, reply)
        return out

    def _snapshot_reply(self, deal_id: int, now_ms: int, client: Any = None):
        return self.scripts("snapshot", list(K.deal_keys(deal_id)), [now_ms, self.reclaim_limit], client=client)

    def _snapshot(self, deal_id: int, reply: list) -> Snapshot:
        code = code_of(reply)
        if code is not Code.OK:
            raise self._failure(code, reply)
        quantity, available, reserved, sold, holds = (int(v) for v in reply[1:6])
        if available > 0:
            self.sold_out.forget(deal_id)
        return Snapshot(deal_id, quantity, available, reserved, sold, holds, int(reply[6]), reply[7])

    @_redis_errors
    def holds(self, deal_id: int) -> dict[str, tuple[int, int]]:
        """token -> (units, ends_at_ms) for every hold of the deal (for checks and the dashboard)."""
        keys = K.deal_keys(deal_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.zrange(keys.holds, 0, -1, withscores=True)
        pipe.hgetall(keys.units)
        ends, units = pipe.execute()
        return {token: (int(units.get(token, 0)), int(score)) for token, score in ends}

    @_redis_errors
    def active_holds(self, deal_ids: list[int], now_ms: int, per_deal: int) -> list[tuple[str, int, int, int]]:
        """(token, deal_id, units, ends_at_ms) of the holds still running, at most `per_deal` of
        each deal (the soonest to end), soonest end first; two pipelined round trips."""
        if not deal_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for deal_id in deal_ids:
            pipe.zrangebyscore(K.deal_keys(deal_id).holds, f"({now_ms}", "+inf", start=0, num=per_deal, withscores=True)
        ends_by_deal = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        asked = []
        for deal_id, ends in zip(deal_ids, ends_by_deal, strict=True):
            if ends:
                pipe.hmget(K.deal_keys(deal_id).units, [token for token, _ in ends])
                asked.append((deal_id, ends))
        holds = []
        for (deal_id, ends), units in zip(asked, pipe.execute() if asked else [], strict=True):
            for (token, score), held in zip(ends, units, strict=True):
                holds.append((token, deal_id, int(held or 0), int(score)))
        holds.sort(key=lambda hold: hold[3])
        return holds

    @_redis_errors
    def marks(self, deal_id: int) -> dict[str, int]:
        """token -> units of claims and direct purchases that took stock here and whose SQL
        commit is not confirmed yet (see lua/lib.lua, `marks`)."""
        marks = self.client.hgetall(K.deal_keys(deal_id).marks)
        return {token: int(fields_of(mark)[0]) for token, mark in marks.items()}

    @_redis_errors
    def user_units(self, deal_id: int) -> dict[str, int]:
        return {user: int(n) for user, n in self.client.hgetall(K.deal_keys(deal_id).users).items()}

    # -- the waitlist ---------------------------------------------------------------------

    @_redis_errors
    def wait(self, deal_id: int, entry_id: int, user_id: str, now_ms: int) -> int:
        """Queue a waiting customer (units available now are offered at once); returns the
        offers made. Raises NotLoaded, and OfferUnrecorded when an ended offer of this entry is
        still to be written down (record the deal's offers first)."""
        reply = self._write(deal_id, "wait", [entry_id, user_id, now_ms])
        code = code_of(reply)
        if code is Code.NOT_LOADED:
            raise NotLoaded(deal_id)
        if code is Code.FOUND:
            raise OfferUnrecorded(entry_id)
        return int(reply[1])

    @_redis_errors
    def unwait(self, deal_id: int, entry_id: int, user_id: str) -> bool:
        return int(self.scripts("unwait", list(K.deal_keys(deal_id)), [entry_id, user_id])[1]) > 0

    @_redis_errors
    def offered(self, deal_id: int) -> tuple[str, list[Offer]]:
        """(generation, the offers made that SQL does not know yet, oldest first, with the
        items as read). Raises NotLoaded."""
        reply = self.scripts("offered", list(K.deal_keys(deal_id)), [])
        if code_of(reply) is Code.NOT_LOADED:
            raise NotLoaded(deal_id)
        return reply[1], [Offer.parse(deal_id, item) for item in reply[2:]]

    @_redis_errors
    def trim_offered(self, deal_id: int, offers: list[Offer]) -> int:
        """Forget the offers SQL now knows (only if they are still the first ones)."""
        if not offers:
            return 0
        return int(self.scripts("trim_offered", list(K.deal_keys(deal_id)), [o.item for o in offers])[1])

    @_redis_errors
    def deals_with_offers(self) -> list[int]:
        """Loaded deals with offers SQL does not know yet."""
        deal_ids = self.loaded_deals()
        pipe = self.client.pipeline(transaction=False)
        for deal_id in deal_ids:
            pipe.llen(K.deal_keys(deal_id).offered)
        return [deal_id for deal_id, pending in zip(deal_ids, pipe.execute(), strict=True) if pending]

    @_redis_errors
    def waiting(self, deal_id: int) -> list[tuple[int, str]]:
        """(entry id, user_id) of the customers waiting, first first."""
        entries = (fields_of(entry) for entry in self.client.lrange(K.deal_keys(deal_id).waiting, 0, -1))
        return [(int(entry_id), user) for entry_id, user in entries]

    # -- rebuilding -----------------------------------------------------------------------

    @_redis_errors
    def load(self, state: DealState, now_ms: int | None = None) -> str:
        """Replace the deal's live state with `state` (units available while customers wait are
        offered to them at once); returns the new generation."""
        self.sold_out.forget(state.deal_id)
        gen = secrets.token_hex(8)
        args: list[Any] = [
            gen,
            state.account_id,
            state.quantity,
            state.sold,
            state.price,
            state.currency,
            state.max_per_purchase,
            state.max_per_user,
            state.title,
            state.label or str(state.deal_id),
            state.starts_ms,
            state.ends_ms,
            self.offer_ms,
            now_ms or wall_ms(),
            len(state.holds),
        ]
        for token, units, ends_at_ms, holder, entry_id in state.holds:
            args += [token, units, ends_at_ms, holder or "", "" if entry_id is None else entry_id]
        args.append(len(state.users))
        for user_id, units in state.users:
            args += [user_id, units]
        args.append(len(state.waiting))
        args += [joined(entry_id, user_id) for entry_id, user_id in state.waiting]
        reply = self._write(state.deal_id, "load", args)
        if code_of(reply) is Code.NEGATIVE:
            raise InconsistentState(state.deal_id, int(reply[1]))
        next_end = int(reply[2])
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(K.LOADED_DEALS, state.deal_id)
        if next_end >= 0:
            pipe.zadd(K.SWEEP_INDEX, {str(state.deal_id): next_end}, lt=True)
        pipe.execute()
        return gen

    # -- sweeping -------------------------------------------------------------------------

    @_redis_errors
    def index(self, deal_id: int, ends_at_ms: int) -> None:
        """Make sure the sweep index visits `deal_id` no later than `ends_at_ms`."""
        self.client.zadd(K.SWEEP_INDEX, {str(deal_id): ends_at_ms}, lt=True)

    @_redis_errors
    def due(self, now_ms: int, limit: int) -> list[tuple[int, float]]:
        """Deals that may have ended holds, with the index score they were found at."""
        rows = self.client.zrangebyscore(K.SWEEP_INDEX, "-inf", now_ms, start=0, num=limit, withscores=True)
        return [(int(member), score) for member, score in rows]

    @_redis_errors
    def sweep_many(self, deal_ids: list[int], now_ms: int, limit: int) -> list[SweepResult]:
        for deal_id in deal_ids:
            self.sold_out.forget(deal_id)

        def queue(pipe):
            for deal_id in deal_ids:
                self.scripts("sweep", list(K.deal_keys(deal_id)), [now_ms, limit], client=pipe)

        return [SweepResult(int(a), int(b), int(c)) for a, b, c in self._pipelined(queue)]

    @_redis_errors
    def reindex(self, visited: list[tuple[int, float, int]]) -> None:
        """After sweeping: move each (deal, seen score, next end) in the index, then re-read
        each deal's earliest hold and lower its score to it (a reserve may have added one after
        the sweep looked; reserves only ever lower scores, so this check after our write is
        what keeps every hold visible to the index)."""

        def queue(pipe):
            for deal_id, seen, next_end in visited:
                self.scripts("index_set", [K.SWEEP_INDEX], [deal_id, repr(seen), next_end], client=pipe)

        self._pipelined(queue)
        pipe = self.client.pipeline(transaction=False)
        for deal_id, first in zip((v[0] for v in visited), self._first_ends(v[0] for v in visited), strict=True):
            if first is not None:
                pipe.zadd(K.SWEEP_INDEX, {str(deal_id): first}, lt=True)
        pipe.execute()

    def _first_ends(self, deal_ids: Iterable[int]) -> Iterator[int | None]:
        pipe = self.client.pipeline(transaction=False)
        for deal_id in deal_ids:
            pipe.zrange(K.deal_keys(deal_id).holds, 0, 0, withscores=True)
        for row in pipe.execute():
            yield int(row[0][1]) if row else None

    @_redis_errors
    def loaded_deals(self) -> list[int]:
        return sorted(int(d) for d in self.client.sscan_iter(K.LOADED_DEALS, count=1000))

    @_redis_errors
    def loaded_count(self) -> int:
        return int(self.client.scard(K.LOADED_DEALS))

    @_redis_errors
    def some_loaded_deals(self, limit: int) -> list[int]:
        """At most `limit` loaded deals (a bounded SSCAN, not the whole set), sorted."""
        if limit <= 0:
            return []
        ids: list[int] = []
        for member in self.client.sscan_iter(K.LOADED_DEALS, count=min(limit, 1000)):
            ids.append(int(member))
            if len(ids) >= limit:
                break
        return sorted(ids)

    @_redis_errors
    def repair_index(self) -> int:
        """Index every loaded deal that has holds (covers a process killed between its reserve
        and its index write). Costs O(loaded deals); the worker runs it now and then."""
        deal_ids = self.loaded_deals()
        fixed = 0
        pipe = self.client.pipeline(transaction=False)
        for deal_id, first in zip(deal_ids, self._first_ends(deal_ids), strict=True):
            if first is not None:
                pipe.zadd(K.SWEEP_INDEX, {str(deal_id): first}, lt=True)
                fixed += 1
        pipe.execute()
        return fixed

    # -- helpers --------------------------------------------------------------------------

    def _write(self, deal_id: int, name: str, args: list[Any], *, wrote: Callable[[Any], bool] = _took) -> list:
        """A script that defines live state (it takes stock, or loads or adopts a take), over
        the deal's keys, acknowledged by the replicas when they are required and `wrote(reply)`
        says it wrote. A write the replicas did not acknowledge may or may not survive a
        failover, so the deal's live state is dropped (the next request rebuilds it from SQL,
        where this write never got) and the request answers 503."""
        keys = list(K.deal_keys(deal_id))
        if self.replicated is None:
            return self.scripts(name, keys, args)
        script = self.scripts.script(name)
        try:
            return self.replicated.run(
                keys[0], ("EVALSHA", script.sha, len(keys), *keys, *args), wrote=wrote, script=script
            )
        except NotReplicated:
            try:
                self.invalidate(deal_id)
            except Exception:  # the reconciler repairs what this could not
                pass
            raise

    def _write_ask(self, ask: Ask) -> list:
        """A taking script. Its refusal of a request others may retry is a write too (the
        refusal is noted, lua/lib.lua note_refusal): one the replicas may lose is not answered."""
        return self._write(ask.order.deal_id, ask.script, ask.args, wrote=_any if ask.order.refusal_noted else _took)

    def _pipelined(self, queue) -> list:
        """Run the commands `queue(pipe)` adds, in one pipeline. On a cluster a pipeline does
        not load a script a server lacks (a master that restarted or was just promoted), so on
        NOSCRIPT load them all and run the pipeline once more (every script run this way may
        run twice: sweeps, snapshots and index updates are idempotent)."""
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            queue(pipe)
            try:
                return pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self.scripts.load_all()
        raise AssertionError("unreachable")

    def _refuse_from_memory(self, ask: Ask) -> None:
        if ask.memo:
            order = ask.order
            token = order.token if order.refusal_noted else None
            self.refuse_from_memory(order.deal_id, order.account_id, order.units, token, ask.now_ms)

    def _read(self, ask: Ask, reply: list) -> Taken | Found:
        """A taking script's reply: its take ({OK, gen, ...}: for reserve and buy {OK, gen,
        available_after, ...} the rest named by `_FIELDS`), what the token already had, or the
        refusal (raised)."""
        order = ask.order
        code = code_of(reply)
        if code is not Code.OK:
            return self._other(code, reply, order)
        if ask.script == "claim":
            from_hold = int(reply[2]) == 1
            taken = order.taken(
                reply[1],
                int(reply[3]),
                from_hold=from_hold,
                # Only a take from stock can leave the deal sold out.
                available_after=None if from_hold else int(reply[4]),
                title=reply[5],
                label=reply[6],
            )
        else:
            taken = order.taken(reply[1], order.units, available_after=int(reply[2]), **_FIELDS[ask.script](reply[3:]))
        return self._noted(taken)

    @_redis_errors
    def refuse_from_memory(
        self, deal_id: int, account_id: int, units: int, token: str | None = None, now_ms: int = 0
    ) -> None:
        """SoldOut without the taking script, when the sold-out memo knows the deal sold out and
        no earlier attempt of this write can hold what sold it out. `token` None: the write's
        token is fresh (random, made for this request). A token derived from an Idempotency-Key
        or a transaction id may belong to the attempt that took the very unit that sold the deal
        out, still running or dead with its hold in Redis; when it has a hold or a mark here, only
        the script can say what to do (request_in_progress, or the hold adopted), so this returns.
        Otherwise the refusal is noted at `now_ms`, as the script notes its own (lua/held.lua)."""
        if not self.sold_out.knows_sold_out(deal_id, account_id):
            return
        if token is not None and self._held.get((deal_id, token, now_ms)):
            return
        raise SoldOut(0, units)

    def _held_many(self, asks: list[tuple[int, str, int]]) -> dict[tuple[int, str, int], bool]:
        """Which (deal, token, now) have a hold or a mark (the others' refusals are noted at the
        latest now of their deal's): one script run per deal."""
        asks_of: dict[int, list[tuple[int, str, int]]] = {}
        for ask in asks:
            asks_of.setdefault(ask[0], []).append(ask)
        held = {}
        for deal_id, its in asks_of.items():
            now_ms = max(now for _, _, now in its)
            found = self._write(deal_id, "held", [now_ms, *(token for _, token, _ in its)], wrote=_any)
            held.update((ask, True) for ask, flag in zip(its, found, strict=True) if flag)
        return held

    def _noted(self, taken: Taken) -> Taken:
        if taken.available_after == 0:
            self.sold_out.remember(taken.deal_id, taken.account_id)
        return taken

    def _other(self, code: Code, reply: list, order: Order) -> Found:
        """A taking script's reply other than OK: what the token already had, or a refusal."""
        if code is Code.FOUND:
            return _found(order.deal_id, order.token, reply)
        if code is Code.SOLD_OUT:
            raise self._sold_out(order.deal_id, order.account_id, int(reply[1]), order.units)
        if code is Code.REFUSED:
            raise SoldOut(0, order.units)  # the answer another request with this token was given
        raise self._failure(code, reply)

    def _sold_out(self, deal_id: int, account_id: int, available: int, units: int) -> SoldOut:
        if available <= 0:
            self.sold_out.remember(deal_id, account_id)
        return SoldOut(available, units)

    @staticmethod
    def _failure(code: Code, reply: list) -> Exception:
        if code is Code.NOT_LOADED:
            return NotLoaded()
        if code is Code.NOT_FOUND:
            return DealNotFound()
        if code is Code.OVER_PURCHASE_LIMIT:
            return OverPurchaseLimit(int(reply[1]))
        if code is Code.OVER_USER_LIMIT:
            return OverUserLimit(int(reply[1]), int(reply[2]))
        if code is Code.PRICE_CHANGED:
            return PriceChanged(int(reply[1]))
        if code is Code.NOT_STARTED:
            return NotStarted(from_ms(int(reply[1])))
        if code is Code.SALE_ENDED:
            return SaleEnded(from_ms(int(reply[1])))
        if code is Code.NOT_HELD:
            return NotHeld()
        if code is Code.TOO_OLD:
            return Unavailable("this request ran too long to take stock; retry it")
        return UnknownReply(f"unexpected script reply {reply!r}")
