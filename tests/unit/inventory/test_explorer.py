"""The explorer: seeded schedules of concurrent checkouts, background work and faults, over the
real services (real Redis, SQLite and PostgreSQL), with the invariants of SPEC checked after
every step.

Each schedule has a few logical clients, each a thread running a checkout plan (a keyed
reserve, then a keyed claim (sometimes after the hold ended), release or extension; a keyed direct purchase; a v3 purchase over
two deals; a keyed cart over one or both deals, then its keyed claim, release or extension; or a
waitlist customer: a keyed join of a deal's waitlist, then a keyed leave, a claim of the offer
the queue makes them, or nothing), retrying with the same key whenever it got no answer, as a
real checkout does. Some reserves and carts meet a rival: another claim, release or extension of
what they reserved, with its own key and maybe another customer, racing the plan's own (a
payment callback claiming while the customer cancels). The threads take turns: a client runs only when the
scheduler hands it the baton, until the next step boundary of the write protocol (the hooks in
app/inventory/protocol.py and group_commit.py). So a schedule is one interleaving, chosen by a
seeded random generator, and replays exactly from its seed.

At each boundary the scheduler may inject a fault:

* the script's reply is lost after it ran (a connection error), and the request fails;
* the client library sends a script again after it ran (every script, give-backs included), or
  a whole pipeline (a cart's or a v3 purchase's takes);
* the process serving the request dies between its script and its commit, while it waits for
  its group commit, or right after its commit;
* the transaction fails before its COMMIT, or its COMMIT fails after it happened;
* the reply to a committed write is lost on its way to the client.

Between client steps it runs what runs beside the checkouts: the sweep (and, as the worker's
sweep job does, the recording of the waitlist offers Redis made), a rebuild, the reconciler
(which also gives up carts left pending by dead attempts),
FLUSHALL, a quantity change, a group commit of whatever is waiting, and the clock moving on (by
milliseconds or by minutes). Even seeds run with the sold-out memo on (SOLD_OUT_CACHE_MS), and
half their reserves ask `known_refusal` first, as the sold-out gate does.

After every step it checks: no oversell (SQL's sold + active holds <= quantity); Redis whole
(available + reserved + sold == quantity, available >= 0, reserved == the holds' units) and
never promising a unit SQL has promised (Redis available <= quantity - SQL sold - SQL active
holds); every 2xx answer backed by its committed row; one purchase per key and every retry of a
key answered with the same bytes; one coupon per unit; a keyed reserve or purchase answered sold_out has neither a hold or mark in
Redis nor a row in SQL (its first attempt's take is never refused from memory); the outbox: every committed change of a
purchase has its event, once, and no event exists without its change. The waitlist (units coming
back go to the waiting customers as offers, holds of their own made by the Lua step that returns
them and written to SQL afterwards): each offer is a hold of one unit of exactly one entry
(token wl<entry>), so an entry has at most one offer at a time; an offer SQL has not recorded
yet is listed in the deal's `offered` (its entry may still be waiting, or left, in SQL), a
recorded one is the entry's purchase; an entry waits in the Redis queue once, never while it
holds an offer, and never after SQL wrote its offer down; offers are made from the head of the
queue (no waiting customer is passed over, the queue keeps its order); an offer's purchase is
one unit for the entry's customer. Carts are all or nothing: a cart pending or abandoned has no
item rows, any other has one purchase per item (of the items' deals), all reserved or ended while
it is reserved, all released or expired once released (unless an item was claimed or released on
its own), all fulfilled for one customer once claimed; one cart per key (a retry after its cart was given up starts that cart again); every state a cart reached has its event, once. At the end, with every client done, the holds ended (the
waiting customers offered the units that came back until nobody waits or nothing is left) and
the reconciler run: no leak (available == quantity - sold), nobody waits while units are
available, and a FLUSHALL rebuilds exactly what SQL says.

`make test` runs EXPLORER_SCHEDULES (default 2,000) schedules, shared by the SQL backends (1,400
on SQLite, 600 on PostgreSQL); set it higher to explore more (EXPLORER_SEED picks the first seed;
a failure names the seed that reproduces it).
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from sqlalchemy import bindparam, func, select

from app.core.errors import DomainError, RequestInProgress, Unavailable
from app.core.idempotency import Keyed, Replay, fingerprint
from app.core.jsonutil import dumps
from app.core.timeutil import to_ms
from app.inventory import keys as K
from app.inventory.errors import InventoryError, OverUserLimit, SoldOut
from app.inventory.group_commit import GroupCommitter, Pending
from app.inventory.ledger import NewPurchase, Product
from app.inventory.rebuild import sql_state
from app.inventory.scripts import Code, UnknownReply, code_of
from app.inventory.serializers import cart_json, purchase_json
from app.inventory.stock import Offer, SoldOutMemo, fields_of
from app.store.models import Cart, Coupon, Deal, IdempotencyRecord, Purchase, PurchaseItem, StoredEvent, WaitlistEntry
from tests.conftest import BACKENDS
from tests.support.clock import ControlledClock

#: Schedules in all, shared by the SQL backends that run (PostgreSQL's cost twice SQLite's).
SCHEDULES = int(os.environ.get("EXPLORER_SCHEDULES", "2000"))
WEIGHTS = {"sqlite": 0.7, "postgresql": 0.3}
FIRST_SEED = int(os.environ.get("EXPLORER_SEED", "1"))
MAX_STEPS = 60
USERS = ("ann", "bob")
#: The waitlist's customers (two clients may be the same customer on the same deal: one entry).
WAITING_USERS = ("cy", "dee")
#: What a waitlist customer does after joining.
WAITLIST_THEN = ("leave", "claim_offer", "claim_offer", "stay")
#: A cart's requests.
CART_KINDS = ("cart", "cart_claim", "cart_release", "cart_extend")
#: A claim or release of one item of a cart, through the purchases' API.
ITEM_KINDS = ("item_claim", "item_release")


class Killed(BaseException):  # noqa: N818 (a process dying, not an error the code may catch)
    """The process serving the request died here: its thread unwinds, nothing is compensated."""


class InjectedFailure(Exception):
    """A transaction that failed (before or at its COMMIT) by the explorer's hand."""


@pytest.fixture
def app_config(app_config):
    return {**app_config, "GROUP_COMMIT": False}


def _deal_totals():
    """(deal, quantity, sold, units in active holds) of some deals, in one query."""
    sold = (
        select(func.coalesce(func.sum(PurchaseItem.quantity), 0))
        .where(PurchaseItem.deal_id == Deal.id)
        .scalar_subquery()
    )
    held = (
        select(func.coalesce(func.sum(Purchase.units), 0))
        .where(
            Purchase.deal_id == Deal.id,
            Purchase.fulfillment_state == "reserved",
            Purchase.reserved_until > bindparam("now", type_=Purchase.reserved_until.type),
        )
        .scalar_subquery()
    )
    return (
        select(Deal.id, Deal.quantity, sold, held)
        .where(Deal.id.in_(bindparam("deals", expanding=True)))
        .order_by(Deal.id)
    )


def _rows():
    """An account's purchases since an instant, with their lines and coupons counted."""
    lines = select(func.count(PurchaseItem.id)).where(PurchaseItem.purchase_id == Purchase.id).scalar_subquery()
    coupons = select(func.count(Coupon.id)).where(Coupon.purchase_id == Purchase.id).scalar_subquery()
    return select(
        Purchase.token,
        Purchase.deal_id,
        Purchase.source,
        Purchase.fulfillment_state,
        Purchase.user_id,
        Purchase.units,
        Purchase.waitlist_entry_id,
        Purchase.cart_id,
        lines.label("lines"),
        coupons.label("coupons"),
    ).where(
        Purchase.account_id == bindparam("account"),
        Purchase.created_at >= bindparam("since", type_=Purchase.created_at.type),
    )


def _events():
    """An account's outbox events after a row id: (type, data)."""
    return select(StoredEvent.type, StoredEvent.data).where(
        StoredEvent.account_id == bindparam("account"), StoredEvent.id > bindparam("after")
    )


def _carts():
    """An account's carts since an instant."""
    return select(Cart.token, Cart.state, Cart.items).where(
        Cart.account_id == bindparam("account"),
        Cart.created_at >= bindparam("since", type_=Cart.created_at.type),
    )


def _entries():
    """The waitlist entries of some deals."""
    return select(
        WaitlistEntry.id,
        WaitlistEntry.deal_id,
        WaitlistEntry.user_id,
        WaitlistEntry.state,
        WaitlistEntry.purchase_token,
    ).where(WaitlistEntry.deal_id.in_(bindparam("deals", expanding=True)))


DEAL_TOTALS, ROWS, EVENTS, ENTRIES, CARTS = _deal_totals(), _rows(), _events(), _entries(), _carts()
#: The event a purchase's state was reached by (the outbox writes it with the change).
STATE_EVENTS = {
    "reserved": "purchase.reserved",
    "fulfilled": "purchase.fulfilled",
    "released": "purchase.released",
    "expired": "purchase.expired",
}
#: The event each state a cart can be in was reached by (a cart reserved then claimed has two).
CART_EVENTS = {"reserved": "cart.reserved", "fulfilled": "cart.fulfilled", "released": "cart.released"}
#: An offer's purchase was reserved by the queue: its event is waitlist.offered.
OFFER_EVENTS = {**STATE_EVENTS, "reserved": "waitlist.offered"}


# -- the clients' side ---------------------------------------------------------------------------


@dataclass
class Client:
    name: str
    plan: list
    step: str = "start"
    done: bool = False
    fault: str | None = None
    pending: Pending | None = None
    #: What the next inline commit does: None, "fail_before" or "fail_after".
    commit_fault: str | None = None
    thread: threading.Thread | None = None
    error: BaseException | None = None
    #: What the plan learned so far (the token a reserve answered).
    state: dict = field(default_factory=dict)
    #: Where the plan is.
    at: int = 0
    #: The checkout stopped waiting for this request (a timeout) and retried it elsewhere: the
    #: request runs on in the server, but nobody hears its answer.
    orphan: bool = False


@dataclass
class Seen:
    """What the clients were told, to check against the stores."""

    #: key -> every 2xx body answered for it (a retry's replay included)
    bodies: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: (kind, key, token, user) of every 2xx write
    writes: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    #: (kind, key, cart token, its items' one customer) of every 2xx cart write
    carts: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    #: token -> (deal, flushes so far) of every reserve or create answered sold_out
    sold_out: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: key -> flushes so far, of every claim answered sold_out or limit_exceeded
    refused_claims: dict[str, int] = field(default_factory=dict)


def render(purchase) -> tuple[int, str]:
    return 200, dumps({"status": "success", "purchase": purchase_json(purchase)})


def render_cart(cart) -> tuple[int, str]:
    return 200, dumps({"status": "success", "cart": cart_json(cart)})


def render_entry(entry) -> tuple[int, str]:
    return 200, dumps({"status": "success", "entry": {"id": entry.id, "deal_id": entry.deal_id, "user": entry.user_id}})


# -- the scheduler ------------------------------------------------------------------------------


def _answered_since(reply) -> Code | None:
    """A script's reply from answered_since (lua/lib.lua): REFUSED (a request with its name was
    refused since this one began) or TOO_OLD (begun too long ago to tell); else None."""
    if not isinstance(reply, list):
        return None
    try:
        code = code_of(reply)
    except UnknownReply:
        return None
    return code if code in (Code.REFUSED, Code.TOO_OLD) else None


class ResendingScripts:
    """Around LiveStock's scripts: sometimes sends a script a second time after it ran, as a
    client library does after a connection error, and returns the second reply."""

    def __init__(self, scripts, explorer: Explorer) -> None:
        self.scripts = scripts
        self.explorer = explorer

    def __call__(self, name, keys, args, client=None):
        reply = self.scripts(name, keys, args, client=client)
        if client is None and self.explorer.rng.random() < 0.08:
            self.explorer.resends += 1
            reply = self.scripts(name, keys, args, client=client)
        code = _answered_since(reply)
        if code is not None:  # the window lua/lib.lua answered_since closes was reached
            self.explorer.faults[f"{name} {code.name.lower()} by answered_since"] += 1
        return reply

    def __getattr__(self, name):
        return getattr(self.scripts, name)


class ResendingPipelines:
    """Around LiveStock's pipelines (a cart's or a v3 purchase's takes, in one round trip):
    sometimes, in a client's request, sends the whole pipeline a second time after it ran, as
    redis-py does when retrying after a connection error, and returns the second replies."""

    def __init__(self, pipelined, explorer: Explorer) -> None:
        self.pipelined = pipelined
        self.explorer = explorer

    def __call__(self, queue):
        replies = self.pipelined(queue)
        if self.explorer.current() is not None and self.explorer.rng.random() < 0.08:
            self.explorer.resends += 1
            self.explorer.faults["pipeline_resent"] += 1
            replies = self.pipelined(queue)
        return replies


class ManualCommitter(GroupCommitter):
    """Group commit driven by the scheduler: a write waits until the scheduler commits a batch
    holding it (or its process dies while it waits)."""

    def __init__(self, *args, explorer: Explorer, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.explorer = explorer
        self.waiting: list[Pending] = []

    def commit(self, write, takes=(), keyed=None):
        if self.explorer.current() is None:  # the worker's recording of offers, run by the scheduler
            return super().commit(write, takes, keyed)
        pending = Pending(write, tuple(takes), keyed)
        self.waiting.append(pending)
        self.explorer.wait_for_commit(pending)
        return pending.result.wait(timeout=0).answer


class Explorer:
    def __init__(self, services, clock: ControlledClock, account_id: int, seed: int) -> None:
        self.services = services
        self.clock = clock
        self.account_id = account_id
        self.seed = seed
        self.rng = random.Random(seed)
        self.cv = threading.Condition()
        self.turn: Client | None = None
        self.local = threading.local()
        self.seen = Seen()
        self.resends = 0
        self.flushes = 0
        self.faults: dict[str, int] = defaultdict(int)
        self.batched = self.rng.random() < 0.5
        protocol = services.protocol
        self.original = (protocol.hooks, protocol.committer, services.stock.scripts, services.stock.sold_out)
        self.memo = seed % 2 == 0
        if self.memo:  # on the controlled clock, long enough to outlive the schedule
            services.stock.sold_out = SoldOutMemo(3_600_000, clock=lambda: clock().timestamp())
        protocol.hooks = self
        services.stock.scripts = ResendingScripts(services.stock.scripts, self)
        services.stock._pipelined = ResendingPipelines(services.stock._pipelined, self)
        if self.batched:
            committer = protocol.committer
            protocol.committer = ManualCommitter(
                committer.db, committer.stock, committer.kept, threaded=False, hooks=self, clock=clock, explorer=self
            )
        else:
            protocol.committer.hooks = self
        # A second on: the last schedule's end (its offers written down in quiesce) is before this
        # one's start, so the rows since then are this schedule's.
        clock.advance(1)
        self.started = clock()
        with services.db.read() as session:  # the schedules before this one wrote these
            self.events_before = session.scalar(select(func.coalesce(func.max(StoredEvent.id), 0)))
        self.caps = {self._deal(4, None): None, self._deal(5, 3): 3}
        self.deals = list(self.caps)
        #: deal -> (generation, the Redis queue) at the last check, for the queue-order check.
        self.queues: dict[int, tuple[str | None, list[int]]] = {}
        #: The offers written down in SQL (their purchase tokens), and the joins answered.
        self.offers: set[str] = set()
        self.joins = 0
        #: Carts one of whose items was claimed or released on its own: its items may differ.
        self.loose_carts: set[str] = set()
        self.clients = [Client(f"c{i}", self._plan(i)) for i in range(self.rng.randint(2, 4))]

    def restore(self) -> None:
        protocol = self.services.protocol
        protocol.hooks, protocol.committer, self.services.stock.scripts, self.services.stock.sold_out = self.original
        protocol.committer.hooks = self.original[0]
        del self.services.stock._pipelined  # the class's method again

    def _deal(self, quantity: int, cap: int | None) -> int:
        view = self.services.deals.create(
            self.account_id,
            title="d",
            price_per_unit=100,
            quantity=quantity,
            sku=f"s{self.seed}-{quantity}",
            max_per_user=cap,
        )
        return view.deal.id

    # -- plans ----------------------------------------------------------------------------------

    def _plan(self, i: int) -> list:
        rng, key = self.rng, f"s{self.seed}-c{i}"
        deal = rng.choice(self.deals)
        if rng.random() < 0.3:
            user, then = rng.choice(WAITING_USERS), rng.choice(WAITLIST_THEN)
            return [("join", deal, user, f"{key}-j"), (then, user, f"{key}-{then}")]
        units = rng.randint(1, 3)
        roll = rng.random()
        if roll < 0.5:
            then = rng.choice(["claim", "claim", "release", "extend", "abandon"])
            plan = [("reserve", deal, units, f"{key}-r"), (then, rng.choice(USERS), f"{key}-{then}")]
            plan = self._with_rival(plan, ["claim", "release", "extend"])
            if then == "claim" and rng.random() < 0.4:
                # The customer pays after the hold ended: the claim takes the units again, from
                # stock another buyer races it for (a refusal, or a claim from stock).
                plan.insert(-1, ("outlive", deal, f"{key}-o"))
            return plan
        if roll < 0.7:
            return [("create", deal, units, rng.choice(USERS), f"{key}-b")]
        if roll < 0.9:
            items = tuple((d, rng.randint(1, 2)) for d in self.deals if d == deal or rng.random() < 0.6)
            then = rng.choice(["cart_claim", "cart_claim", "cart_release", "cart_extend", "abandon"])
            plan = [("cart", items, f"{key}-k"), (then, rng.choice(USERS), f"{key}-{then}")]
            return self._with_rival(plan, ["cart_claim", "cart_release", "cart_extend", *ITEM_KINDS])
        return [("v3", units, f"{key}-t")]

    def _with_rival(self, plan: list, kinds: list[str]) -> list:
        """Sometimes a second request on what the plan reserved races the plan's own, with its
        own key (a payment callback claiming while the customer cancels, a double click); a
        cart's may be a claim or release of one of its items, each a v1 purchase of its own."""
        if self.rng.random() >= 0.3:
            return plan
        kind = self.rng.choice(kinds)
        user, key = self.rng.choice(USERS), plan[1][-1] + f"-rival-{kind}"
        request = (kind, user, self.rng.randrange(2), key) if kind in ITEM_KINDS else (kind, user, key)
        return [plan[0], ("rival", request), plan[1]]

    def _spawn(self, client: Client) -> None:
        """Another client, running from now on."""
        self.clients.append(client)
        client.thread = threading.Thread(target=self._client_main, args=(client,), daemon=True)
        client.thread.start()

    # -- the baton ------------------------------------------------------------------------------

    def current(self) -> Client | None:
        return getattr(self.local, "client", None)

    def _yield(self, step: str) -> str | None:
        client = self.current()
        with self.cv:
            client.step = step
            self.turn = None
            self.cv.notify_all()
            self.cv.wait_for(lambda: self.turn is client)
            fault, client.fault = client.fault, None
        if fault == "kill":
            self.faults["kill@" + step] += 1
            raise Killed()
        return fault

    def _resume(self, client: Client, fault: str | None = None) -> None:
        with self.cv:
            client.fault = fault
            self.turn = client
            self.cv.notify_all()
            assert self.cv.wait_for(lambda: self.turn is None, timeout=60), (
                f"seed {self.seed}: {client.name} did not reach its next step (blocked at {client.step})"
            )

    def wait_for_commit(self, pending: Pending) -> None:
        self.current().pending = pending
        self._yield("awaiting_commit")

    # -- the protocol's hooks -------------------------------------------------------------------

    def at(self, step: str, **context: Any) -> None:
        client = self.current()
        if step in ("in_transaction", "after_commit"):
            fault = self._commit_fault(client)
            if step == "after_commit" and client is not None:
                client.commit_fault = None
            if fault == ("fail_before" if step == "in_transaction" else "fail_after"):
                self.faults[fault] += 1
                if client is not None:
                    client.commit_fault = None
                raise InjectedFailure(fault)
            return
        if client is None:
            return  # a rebuild or a batch run by the scheduler
        fault = self._yield(step)
        if fault == "lost":
            self.faults["reply_lost@" + step] += 1
            raise redis.exceptions.ConnectionError("the reply was lost")

    def _commit_fault(self, client: Client | None) -> str | None:
        if client is not None:  # an inline commit: decided when the client reached it
            return client.commit_fault
        if not hasattr(self, "_batch_fault"):
            roll = self.rng.random()
            self._batch_fault = "fail_before" if roll < 0.06 else "fail_after" if roll < 0.12 else None
        fault = self._batch_fault
        return fault

    # -- a client's life ------------------------------------------------------------------------

    def _client_main(self, client: Client) -> None:
        self.local.client = client
        with self.cv:
            self.cv.wait_for(lambda: self.turn is client)
        try:
            while client.at < len(client.plan) and not client.orphan:
                self._perform(client, client.plan[client.at], client.state)
                if client.orphan:
                    break
                client.at += 1
                self._yield("think")
        except BaseException as error:  # noqa: BLE001 (reported by the scheduler)
            client.error = error
        finally:
            with self.cv:
                client.done = True
                self.turn = None
                self.cv.notify_all()

    def _perform(self, client: Client, request: tuple, state: dict) -> None:
        kind, key = request[0], request[-1]
        if kind == "abandon":
            return
        if kind == "outlive":
            self.faults["holds outlived"] += 1
            self.clock.advance(self.services.purchases.policy.ttl_seconds + 1)
            buyer = ("create", request[1], self.rng.randint(1, 3), self.rng.choice(USERS), key + "-buyer")
            self._spawn(Client(client.name + "b", [buyer]))
            return
        if kind == "rival":
            if "token" in state or "cart" in state:
                self.faults["rival requests"] += 1
                if request[1][0] in ITEM_KINDS:
                    self.loose_carts.add(state["cart"])
                self._spawn(Client(client.name + "r", [request[1]], state=dict(state)))
            return
        for _ in range(12):
            client.pending = None
            try:
                answer = self._call(kind, request, state)
            except Replay as replay:
                if not client.orphan:
                    self._answered(kind, key, replay.kept.body, state)
                return
            except Killed:
                if client.orphan:
                    return
                self._yield("backoff")
                continue
            except (RequestInProgress, Unavailable, redis.exceptions.RedisError, InjectedFailure):
                if client.orphan:
                    return
                self._yield("backoff")
                continue
            except DomainError as refusal:
                if isinstance(refusal, SoldOut) and kind in ("reserve", "create"):
                    self.faults["sold_out answers, memo on" if self.memo else "sold_out answers"] += 1
                    if not client.orphan:  # heard; no request with the key begins after it
                        token = self._keyed(key, kind).token
                        self._check_sold_out(token, request[1])
                        self.seen.sold_out[token] = (request[1], self.flushes)
                if isinstance(refusal, (SoldOut, OverUserLimit)) and kind in ("claim", "cart_claim", "item_claim"):
                    self.faults["claims refused"] += 1
                    if not client.orphan:
                        self.seen.refused_claims[key] = self.flushes
                return  # a refusal: the checkout gives up on this request
            if client.orphan:
                return
            if kind == "v3":
                self.seen.writes.append(("v3", key, answer.purchase.token, None))
                return
            if kind == "stay":
                return
            body = (render_entry if kind in ("join", "leave") else render_cart if kind in CART_KINDS else render)(
                answer
            )[1]
            if self._lost_reply():
                self._yield("backoff")
                continue  # committed, but the client never heard: it retries with the same key
            self._answered(kind, key, body, state)
            return
        # Gave up after many tries (a long run of faults): nothing to check for this request.

    def _check_sold_out(self, token: str, deal_id: int) -> None:
        """A keyed write answered sold_out to its client: no earlier attempt of its key holds or
        took anything (else the answer is request_in_progress, the adopted hold, or the kept
        answer). An unheard answer (a timed-out request's) is not checked: the retry that
        replaced it began later and may hold what it took after the refusal."""
        keys = K.deal_keys(deal_id)
        client = self.services.stock.client
        held = client.hexists(keys.units, token) or client.hexists(keys.marks, token)
        assert not held, f"seed {self.seed}: {token} answered sold_out while it holds units of deal {deal_id}"
        with self.services.db.read() as session:
            row = session.scalar(select(Purchase.token).where(Purchase.token == token))
        assert row is None, f"seed {self.seed}: {token} answered sold_out but its purchase exists"

    def _check_refused_claims_stay(self) -> None:
        """A claim answered sold_out or limit_exceeded keeps that answer: no request with its key
        (a timed-out first one still running) claims afterwards, which would keep its answer."""
        keys = [key for key, flushes in self.seen.refused_claims.items() if flushes == self.flushes]
        if not keys:
            return
        with self.services.db.read() as session:
            kept = session.scalars(
                select(IdempotencyRecord.key).where(
                    IdempotencyRecord.account_id == self.account_id, IdempotencyRecord.key.in_(keys)
                )
            ).all()
        assert not kept, f"seed {self.seed}: claims {kept} were refused, then a request with the key claimed"

    def _check_sold_out_stays(self, rows: dict, holds: dict[int, dict]) -> None:
        """A key answered sold_out keeps that answer: the requests with the key still running
        (begun before it: a timed-out first request) take and commit nothing after it. Only a
        flush of Redis (which forgets the refusal) since the answer excuses it."""
        for token, (deal_id, flushes) in self.seen.sold_out.items():
            if flushes != self.flushes:
                continue
            assert token not in rows, f"seed {self.seed}: {token} answered sold_out, then its purchase committed"
            assert token not in holds[deal_id], f"seed {self.seed}: {token} answered sold_out, then held units"

    def _lost_reply(self) -> bool:
        if self.rng.random() < 0.05:
            self.faults["answer_lost"] += 1
            return True
        return False

    def _keyed(self, key: str, kind: str, *body: Any, renders=render) -> Keyed:
        return Keyed(self.account_id, key, fingerprint("POST", kind, list(body)), renders)

    def _call(self, kind: str, request: tuple, state: dict):
        purchases = self.services.purchases
        if kind in ("join", "leave", "claim_offer", "stay"):
            return self._call_waitlist(kind, request, state)
        if kind in CART_KINDS:
            return self._call_cart(kind, request, state)
        if kind in ITEM_KINDS:
            _, user, index, key = request
            token = state["items"][index % len(state["items"])]
            keyed = self._keyed(key, kind, token, user)
            if kind == "item_claim":
                return purchases.claim(self.account_id, token, user_id=user, keyed=keyed)
            return purchases.release(self.account_id, token, keyed=keyed)
        if kind == "reserve":
            _, deal, units, key = request
            keyed = self._keyed(key, kind, deal, units)
            if self.memo and self.rng.random() < 0.5:  # as the sold-out gate asks first
                purchases.known_refusal(self.account_id, deal, units, keyed=keyed)
            return purchases.reserve(self.account_id, deal, units, keyed=keyed)
        if kind == "create":
            _, deal, units, user, key = request
            return purchases.create(
                self.account_id,
                deal,
                units,
                user_id=user,
                credit_card_id="card",
                expected_price_per_unit=100,
                keyed=self._keyed(key, kind, deal, units, user),
            )
        if kind == "v3":
            _, units, key = request
            products = tuple(Product(f"s{self.seed}-{q}", quantity=units) for q in (4, 5))
            return self.services.ledger.create(self.account_id, NewPurchase(key, "x@example.com", products=products))
        token = state.get("token")
        if token is None:
            raise InventoryError("nothing reserved")
        _, user, key = request
        keyed = self._keyed(key, kind, token, user)
        if kind == "claim":
            return purchases.claim(self.account_id, token, user_id=user, keyed=keyed)
        if kind == "release":
            return purchases.release(self.account_id, token, keyed=keyed)
        return purchases.extend(self.account_id, token, seconds=60, keyed=keyed)

    def _call_cart(self, kind: str, request: tuple, state: dict):
        carts = self.services.carts
        if kind == "cart":
            _, items, key = request
            keyed = self._keyed(key, kind, items, renders=render_cart)
            return carts.reserve(self.account_id, list(items), keyed=keyed)
        token = state.get("cart")
        if token is None:
            raise InventoryError("no cart reserved")
        _, user, key = request
        keyed = self._keyed(key, kind, token, user, renders=render_cart)
        if kind == "cart_claim":
            return carts.claim(self.account_id, token, user_id=user, keyed=keyed)
        if kind == "cart_release":
            return carts.release(self.account_id, token, keyed=keyed)
        return carts.extend(self.account_id, token, seconds=60, keyed=keyed)

    def _call_waitlist(self, kind: str, request: tuple, state: dict):
        waitlist = self.services.waitlist
        if kind == "join":
            _, deal, user, key = request
            return waitlist.join(
                self.account_id, deal, user, keyed=self._keyed(key, kind, deal, user, renders=render_entry)
            )
        entry_id = state.get("entry")
        if entry_id is None:
            raise InventoryError("never joined")
        if kind == "stay":
            return None
        _, user, key = request
        if kind == "leave":
            return waitlist.leave(
                self.account_id, entry_id, keyed=self._keyed(key, kind, entry_id, renders=render_entry)
            )
        entry = waitlist.get(self.account_id, entry_id)
        if entry.state == "waiting":
            raise RequestInProgress()  # no offer written down yet: the customer looks again later
        if entry.state != "offered":
            raise InventoryError(f"the entry is {entry.state}")
        keyed = self._keyed(key, "claim", entry.purchase_id, user)
        return self.services.purchases.claim(self.account_id, entry.purchase_id, user_id=user, keyed=keyed)

    def _answered(self, kind: str, key: str, body: str, state: dict) -> None:
        if kind in ("join", "leave"):
            entry = json.loads(body)["entry"]
            self.seen.bodies[key].append(body)
            self.joins += kind == "join"
            state["entry"] = entry["id"]
            return
        if kind in CART_KINDS:
            cart = json.loads(body)["cart"]
            self.seen.bodies[key].append(body)
            user = {p["user_id"] for p in cart["purchases"]}
            self.seen.carts.append((kind, key, cart["id"], user.pop() if len(user) == 1 else None))
            if kind == "cart":
                state["cart"], state["items"] = cart["id"], [p["id"] for p in cart["purchases"]]
            return
        kind = {"claim_offer": "claim", "item_claim": "claim", "item_release": "release"}.get(kind, kind)
        purchase = json.loads(body)["purchase"]
        self.seen.bodies[key].append(body)
        self.seen.writes.append((kind, key, purchase["id"], purchase["user_id"]))
        if kind == "reserve":
            state["token"] = purchase["id"]

    # -- the schedule ---------------------------------------------------------------------------

    def run(self) -> None:
        for client in self.clients:
            client.thread = threading.Thread(target=self._client_main, args=(client,), daemon=True)
            client.thread.start()
        try:
            for _ in range(MAX_STEPS):
                if all(c.done for c in self.clients) and not self._waiting():
                    break
                self._step()
                self.check()
            self._drain()
            self.check()
            self.quiesce()
        finally:
            self._drain()
            self.restore()
        for client in self.clients:
            if client.error is not None and not isinstance(client.error, Killed):
                raise AssertionError(f"seed {self.seed}: {client.name} failed") from client.error

    def _waiting(self) -> list[Pending]:
        committer = self.services.protocol.committer
        return [p for p in getattr(committer, "waiting", []) if not p.result.done()]

    def _resumable(self) -> list[Client]:
        out = []
        for client in self.clients:
            if client.done:
                continue
            if client.step == "awaiting_commit" and client.pending is not None and not client.pending.result.done():
                continue
            out.append(client)
        return out

    def _step(self) -> None:
        rng = self.rng
        clients = self._resumable()
        roll = rng.random()
        if clients and roll < 0.62:
            client = rng.choice(clients)
            self._resume(client, self._fault_for(client))
        elif roll < 0.70 and self._waiting():
            self._commit_batch()
        elif roll < 0.80:
            self.clock.advance(rng.choice([0.05, 0.5, 1.5, 2.5, 30, 301]))
        elif roll < 0.84:
            self.services.sweeper.sweep(now=self.clock())
            if rng.random() < 0.5:  # the worker's sweep job, which writes the offers down next
                self._background(self.services.waitlist.record_all)
        elif roll < 0.87:
            self._background(lambda: self.services.rebuilder.rebuild(rng.choice(self.deals)))
        elif roll < 0.90:
            deal = rng.choice(self.deals)
            self._background(self.services.stock.repair_index)  # the worker's maintenance job
            self._background(lambda: self.services.rebuilder.forget_committed_marks(deal))
            self._background(lambda: self.services.rebuilder.repair(deal))
            self._background(lambda: self.services.carts.abandon_stale(now=self.clock()))
        elif roll < 0.92:
            self.services.redis.flushdb()
            self.flushes += 1
        elif roll < 0.95:
            self._change_quantity(rng.choice(self.deals), rng.choice([-1, 1, 2]))
        elif clients:
            self._resume(rng.choice(clients))

    def _time_out(self, client: Client) -> None:
        """The checkout stops waiting for `client`'s request and sends it again (same key) while
        the first one runs on: a second client takes over the plan from here."""
        self.faults["timeout@" + client.step] += 1
        client.orphan = True
        self._spawn(Client(client.name + "'", client.plan, state=dict(client.state), at=client.at))

    def _fault_for(self, client: Client) -> str | None:
        roll = self.rng.random()
        if client.step in ("took", "committing", "awaiting_commit") and roll > 0.93 and not client.orphan:
            self._time_out(client)
            return None
        if client.step in ("took", "refused", "committing", "answered", "awaiting_commit") and roll < 0.06:
            return "kill"
        if client.step in ("took", "refused") and roll < 0.11:
            return "lost"
        if client.step == "committing":
            fault = self.rng.random()
            client.commit_fault = "fail_before" if fault < 0.06 else "fail_after" if fault < 0.12 else None
        return None

    def _commit_batch(self) -> None:
        waiting = self._waiting()
        size = self.rng.randint(1, len(waiting))
        batch = waiting[:size]
        committer = self.services.protocol.committer
        committer.waiting = [p for p in committer.waiting if p not in batch]
        if hasattr(self, "_batch_fault"):
            del self._batch_fault
        committer.run_batch(batch)

    def _background(self, work) -> None:
        try:
            work()
        except (Unavailable, DomainError, redis.exceptions.RedisError, InjectedFailure):
            pass  # e.g. a rebuild refused; the next use tries again

    def _change_quantity(self, deal_id: int, delta: int) -> None:
        with self.services.db.read() as session:
            quantity = session.get(Deal, deal_id).quantity
        self._background(
            lambda: self.services.deals.update(self.account_id, deal_id, quantity=max(0, quantity + delta))
        )

    def _drain(self) -> None:
        """Let every client finish, without faults; commit whatever waits."""
        for _ in range(2000):
            if all(c.done for c in self.clients) and not self._waiting():
                return
            if self._waiting():
                self._commit_batch()
                continue
            clients = self._resumable()
            if clients:
                self._resume(clients[0])
            self.clock.advance(0.5)
        raise AssertionError(f"seed {self.seed}: the clients did not finish")

    # -- the invariants -------------------------------------------------------------------------

    def check(self) -> None:
        now = self.clock()
        with self.services.db.engine.connect() as connection:
            totals = connection.execute(DEAL_TOTALS, {"deals": self.deals, "now": now}).all()
            rows = {
                row.token: row for row in connection.execute(ROWS, {"account": self.account_id, "since": self.started})
            }
            events = connection.execute(EVENTS, {"account": self.account_id, "after": self.events_before}).all()
            entries = {row.id: row for row in connection.execute(ENTRIES, {"deals": self.deals})}
            carts = connection.execute(CARTS, {"account": self.account_id, "since": self.started}).all()
        pipe = self.services.redis.pipeline(transaction=False)
        for deal_id in self.deals:
            keys = K.deal_keys(deal_id)
            pipe.hmget(keys.inv, "quantity", "available", "reserved", "sold", "gen")
            pipe.hgetall(keys.units)
            pipe.lrange(keys.waiting, 0, -1)
            pipe.hgetall(keys.offers)
            pipe.lrange(keys.offered, 0, -1)
        live = pipe.execute()
        for at, (deal_id, quantity, sold, held) in enumerate(totals):
            where = f"seed {self.seed}, deal {deal_id}"
            assert sold + held <= quantity, f"{where}: SQL oversold: {sold} sold + {held} held > {quantity}"
            inv, units, waiting, offers, offered = live[5 * at : 5 * at + 5]
            self._check_redis(inv[:4], list(units.values()), quantity, sold + held, where)
            self._check_waitlist(deal_id, inv, units, waiting, offers, offered, entries, where)
        self._check_offer_rows(rows, entries)
        self._check_answers(rows)
        self._check_sold_out_stays(rows, {deal_id: live[5 * at + 1] for at, deal_id in enumerate(self.deals)})
        self._check_refused_claims_stay()
        self._check_events(rows, events)
        self._check_carts(carts, rows, events)

    def _check_waitlist(
        self, deal_id: int, inv: list, units: dict, waiting: list, offers: dict, offered: list, entries: dict, where
    ) -> None:
        """The deal's queue and offers in Redis, against SQL's entries (see the module docstring)."""
        if inv[0] is None:
            self.queues.pop(deal_id, None)
            return  # not loaded: the next use rebuilds the queue from SQL
        unrecorded = [Offer.parse(deal_id, item) for item in offered]
        unrecorded_tokens = {offer.token for offer in unrecorded}
        for offer in unrecorded:
            assert offer.token == f"wl{offer.entry_id}", f"{where}: offer {offer}"
        offered_entries = set()
        for token, entry_id in offers.items():
            entry = entries.get(int(entry_id))
            assert token == f"wl{entry_id}", f"{where}: offer {token} is entry {entry_id}'s"
            assert units.get(token) == "1", f"{where}: offer {token} holds {units.get(token)} units, not 1"
            assert entry is not None and entry.deal_id == deal_id, f"{where}: offer {token} of no entry of the deal"
            if entry.purchase_token == token:
                # Written down; left: the leave committed and releases the hold next (or died
                # first: the hold ends by itself).
                assert entry.state in ("offered", "left"), f"{where}: {token} held for {entry}"
            else:  # made in Redis, not written down yet (the customer may have left meanwhile)
                assert entry.state in ("waiting", "left") and token in unrecorded_tokens, (
                    f"{where}: offer {token} held for {entry}, and not listed as unrecorded ({offered})"
                )
            offered_entries.add(int(entry_id))
        queue = [int(fields_of(item)[0]) for item in waiting]
        assert len(set(queue)) == len(queue), f"{where}: an entry waits twice: {waiting}"
        for entry_id in queue:
            entry = entries.get(entry_id)
            assert entry is not None and entry.deal_id == deal_id, f"{where}: {entry_id} waits, no such entry"
            assert entry_id not in offered_entries, f"{where}: {entry} waits and holds an offer"
            # Left: the leave committed and unwaits next (or died first: its offer is refused).
            assert entry.state in ("waiting", "left"), f"{where}: {entry} is in the queue ({waiting})"
        gen = inv[4]
        before_gen, before = self.queues.get(deal_id, (None, []))
        if gen == before_gen:
            # Offers come from the head of the queue: an entry that left the queue for an offer
            # had nobody still waiting ahead of it, and the queue keeps its order.
            now_offered = offered_entries | {o.entry_id for o in unrecorded}
            for at, entry_id in enumerate(before):
                if entry_id in now_offered and entry_id not in queue:
                    passed_over = [e for e in before[:at] if e in queue]
                    assert not passed_over, f"{where}: {entry_id} was offered before {passed_over}, ahead of it"
            kept = [e for e in before if e in queue]
            assert queue[: len(kept)] == kept, f"{where}: the queue {before} became {queue}"
        self.queues[deal_id] = (gen, queue)

    def _check_carts(self, carts: list, rows: dict, events: list) -> None:
        """All or nothing: a cart's items (purchases with its cart_id) exist once it is past
        pending, one per item, and move together; a claimed cart's answer is its row's; one
        cart per key; every state a cart reached has its event, once."""
        items: dict[str, list] = defaultdict(list)
        for row in rows.values():
            if row.cart_id is not None:
                items[row.cart_id].append(row)
        states = {token: state for token, state, _ in carts}
        for token, state, wanted in carts:
            where = f"seed {self.seed}: cart {token} ({state})"
            got = sorted(items.pop(token, []), key=lambda row: row.deal_id)
            if state in ("pending", "abandoned"):
                assert not got, f"{where} has item rows {got}"
                continue
            assert [[row.deal_id, row.units] for row in got] == json.loads(wanted), f"{where}: items {got}"
            allowed = {"reserved": ("reserved", "expired"), "released": ("released", "expired")}.get(state, (state,))
            if token not in self.loose_carts or state == "fulfilled":
                assert all(row.fulfillment_state in allowed for row in got), f"{where}: items {got}"
            if state == "fulfilled":
                assert len({row.user_id for row in got}) == 1, f"{where}: claimed by several customers {got}"
        assert not items, f"seed {self.seed}: items without their cart: {dict(items)}"
        for kind, key, token, user in self.seen.carts:
            assert token in states, f"seed {self.seed}: {kind} {key} answered 2xx but cart {token} has no row"
            if kind == "cart_claim":
                assert states[token] == "fulfilled", f"seed {self.seed}: {kind} {key} -> {states[token]}"
                assert {rows[t].user_id for t in rows if rows[t].cart_id == token} == {user}, f"{kind} {key}"
        cart_keys = {client.plan[0][-1] for client in self.clients if client.plan[0][0] == "cart"}
        # A retry that finds its key's cart given up (its attempt died) starts that cart again:
        # one cart per key, however many attempts died.
        assert len(states) <= len(cart_keys), f"seed {self.seed}: {carts} from {len(cart_keys)} keys"
        seen: dict[str, Counter] = defaultdict(Counter)
        for kind, data in events:
            if kind.startswith("cart."):
                seen[json.loads(data)["cart"]["id"]][kind] += 1
        for token, kinds in seen.items():
            state = states.get(token)
            assert state in CART_EVENTS, f"seed {self.seed}: events {dict(kinds)} for cart {token}"
            # Released, then claimed: a claim tries to take the units again (SPEC), as a
            # purchase's does; a fulfilled cart is never released.
            possible = {"reserved": {"cart.reserved"}, "released": {"cart.reserved", "cart.released"}}.get(
                state, set(CART_EVENTS.values())
            )
            assert {"cart.reserved", CART_EVENTS[state]} <= set(kinds) <= possible and max(kinds.values()) == 1, (
                f"seed {self.seed}: cart {token} is {state}, its events {dict(kinds)}"
            )
        for token, state in states.items():
            assert state not in CART_EVENTS or token in seen, f"seed {self.seed}: cart {token} is {state}, no event"

    def _check_offer_rows(self, rows: dict, entries: dict) -> None:
        """An offer's purchase: one unit, for the entry's customer, the entry's offer."""
        for token, row in rows.items():
            if row.waitlist_entry_id is None:
                continue
            self.offers.add(token)
            entry = entries.get(row.waitlist_entry_id)
            assert entry is not None and token == f"wl{entry.id}", f"seed {self.seed}: offer {token} of {entry}"
            assert (row.units, row.user_id, row.deal_id) == (1, entry.user_id, entry.deal_id), (
                f"seed {self.seed}: offer {row} for {entry}"
            )
            assert entry.state in ("offered", "left") and entry.purchase_token == token, (
                f"seed {self.seed}: {entry} has the offer {row}"
            )

    @staticmethod
    def _check_redis(inv: list, units: list, sql_quantity: int, promised: int, where: str) -> None:
        if inv[0] is None:
            return  # not loaded: the next use rebuilds it from SQL
        quantity, available, reserved, sold = (int(v) for v in inv)
        assert available >= 0, f"{where}: Redis available {available}"
        assert available + reserved + sold == quantity, f"{where}: Redis {inv}"
        assert sum(int(n) for n in units) == reserved, f"{where}: holds {units} != reserved {reserved}"
        if quantity == sql_quantity:
            assert available <= quantity - promised, (
                f"{where}: Redis offers {available} units but SQL has {promised} of {quantity} promised"
            )

    def _check_answers(self, rows: dict) -> None:
        """Every 2xx backed by its row; one body per key; one purchase per key; a fulfilled
        purchase has one line and one coupon per unit."""
        for key, bodies in self.seen.bodies.items():
            assert len(set(bodies)) == 1, f"seed {self.seed}: key {key} answered differently: {bodies}"
        for kind, key, token, user in self.seen.writes:
            row = rows.get(token)
            assert row is not None, f"seed {self.seed}: {kind} {key} answered 2xx but {token} has no row"
            if kind in ("claim", "create", "v3"):
                assert row.fulfillment_state == "fulfilled", f"seed {self.seed}: {kind} {key} -> {row}"
            if kind in ("claim", "create"):
                assert row.user_id == user, f"seed {self.seed}: {kind} {key} -> {row}"
            if kind == "release":
                assert row.fulfillment_state in ("released", "expired", "fulfilled"), f"seed {self.seed}: {row}"
        keys_sent = {client.plan[0][-1] for client in self.clients if client.plan[0][0] in ("reserve", "create", "v3")}
        # Offers are the queue's; cart items are counted with their carts.
        bought = [row for row in rows.values() if row.waitlist_entry_id is None and row.cart_id is None]
        assert len(bought) <= len(keys_sent), f"seed {self.seed}: {len(bought)} purchases from {len(keys_sent)} keys"
        per_user: dict[tuple[int, str], int] = defaultdict(int)
        for row in rows.values():
            if row.fulfillment_state == "fulfilled" and row.source == "v1":
                assert (row.lines, row.coupons) == (1, row.units), f"seed {self.seed}: {row}"
                per_user[(row.deal_id, row.user_id)] += row.units
        for (deal_id, user), units in per_user.items():
            cap = self.caps.get(deal_id)
            assert cap is None or units <= cap, f"seed {self.seed}: {user} has {units} of deal {deal_id}, cap {cap}"

    def _check_events(self, rows: dict, events: list) -> None:
        """The outbox: each change of a purchase wrote its event in its own transaction, so a
        purchase has exactly one event for every state it went through (its current one among
        them), showing that state, and no event is about a purchase that has no row."""
        seen: dict[str, Counter] = defaultdict(Counter)
        for kind, data in events:
            if not kind.startswith("purchase.") and kind != "waitlist.offered":
                continue
            shown = json.loads(data)["purchase"]
            seen[shown["id"]][kind] += 1
            state = shown["fulfillment_state"]
            if kind == "waitlist.offered":
                # Expired: written down after its hold had ended (the offer lapsed unrecorded).
                assert state in ("reserved", "expired"), f"seed {self.seed}: {kind} shows {shown}"
            else:
                assert STATE_EVENTS[state] == kind, f"seed {self.seed}: {kind} shows {shown}"
        for token, kinds in seen.items():
            assert token in rows, f"seed {self.seed}: events {dict(kinds)} for {token}, which never committed"
            assert max(kinds.values()) == 1, f"seed {self.seed}: {token} has events {dict(kinds)}"
        for token, row in rows.items():
            if row.source != "v1":
                assert token not in seen, f"seed {self.seed}: a v3 purchase has events {dict(seen[token])}"
                continue
            expected = OFFER_EVENTS if row.waitlist_entry_id is not None else STATE_EVENTS
            assert seen[token][expected[row.fulfillment_state]] == 1, (
                f"seed {self.seed}: {token} is {row.fulfillment_state} but its events are {dict(seen[token])}"
            )
            if row.waitlist_entry_id is not None:  # made by the queue, whatever came after
                assert seen[token]["waitlist.offered"] == 1, f"seed {self.seed}: {token}: {dict(seen[token])}"

    #: Faults after which a take may stay in Redis without its row until the reconciler runs
    #: (a process that died between them, or a request nobody retried to its end): an
    #: undersell, allowed; without them, nothing may leak even before the reconciler.
    STRANDING = ("kill@took", "kill@committing", "reply_lost@took", "timeout@")

    def quiesce(self) -> None:
        """Every hold ended, the sweep and the reconciler run: Redis says exactly what SQL says,
        nothing leaked; and a FLUSHALL rebuilds the same. Without a fault that can strand a
        take, the sweep alone leaves nothing for the reconciler."""
        services = self.services
        self._batch_fault = None  # no more faults
        stranding = any(fault.startswith(self.STRANDING) for fault in self.faults)
        # Each round ends the holds (offers included): their units go to the next waiting
        # customers as new offers, which the worker writes down; until nobody waits or nothing
        # comes back.
        for _ in range(20):
            self.clock.advance(1000)
            for deal_id in self.deals:
                services.rebuilder.ensure_loaded(deal_id)  # a deal flushed loads its queue, offering
            if stranding:  # a hold made by a process that died before it indexed the deal
                services.stock.repair_index()  # the worker's maintenance job
            services.sweeper.sweep(now=self.clock())
            services.waitlist.record_all()
            if not any(services.redis.hlen(K.deal_keys(deal_id).offers) for deal_id in self.deals):
                break
        else:
            raise AssertionError(f"seed {self.seed}: the offers never ended")
        services.sweeper.sweep(now=self.clock())  # the offers written down after they ended
        self.check()
        services.carts.abandon_stale(now=self.clock())
        with services.db.read() as session:
            pending = session.scalar(
                select(func.count()).where(Cart.state == "pending", Cart.created_at >= self.started)
            )
        assert not pending, f"seed {self.seed}: {pending} carts still pending after the reconciler"
        for deal_id in self.deals:
            services.rebuilder.forget_committed_marks(deal_id)
            drift = services.rebuilder.repair(deal_id)
            assert stranding or not drift, f"seed {self.seed}, deal {deal_id}: leaked without a crash: {drift}"
        for attempt in ("live", "rebuilt"):
            with services.db.read() as session:
                for deal_id in self.deals:
                    truth = sql_state(session, session.get(Deal, deal_id), self.clock())
                    assert truth.reserved == 0
                    services.rebuilder.ensure_loaded(deal_id)
                    live = services.stock.snapshot(deal_id, to_ms(self.clock()))
                    assert not (truth.waiting and live.available), (
                        f"seed {self.seed}, deal {deal_id} ({attempt}): {live.available} units available "
                        f"while {truth.waiting} wait"
                    )
                    assert (live.quantity, live.available, live.reserved, live.sold) == (
                        truth.quantity,
                        truth.quantity - truth.sold,
                        0,
                        truth.sold,
                    ), f"seed {self.seed}, deal {deal_id} ({attempt}): Redis {live} against SQL {truth}"
            services.redis.flushdb()


def test_seeded_schedules_keep_every_invariant(services, account, clock, backend):
    running = [b for b in BACKENDS if b in WEIGHTS]
    schedules = round(SCHEDULES * WEIGHTS[backend] / sum(WEIGHTS[b] for b in running))
    totals: dict[str, int] = defaultdict(int)
    offset = 0 if backend == "sqlite" else 1_000_000
    for seed in range(FIRST_SEED + offset, FIRST_SEED + offset + schedules):
        explorer = Explorer(services, clock, account[0], seed)
        explorer.run()
        totals["resends"] += explorer.resends
        totals["writes answered"] += len(explorer.seen.writes)
        totals["cart writes answered"] += len(explorer.seen.carts)
        totals["waitlist joins answered"] += explorer.joins
        totals["waitlist offers"] += len(explorer.offers)
        for fault, count in explorer.faults.items():
            totals[fault] += count
    print(f"\n{schedules} schedules on {backend}: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    assert totals["writes answered"] > schedules  # the schedules did sell things
    assert totals["cart writes answered"] > schedules // 4  # and carts were held and claimed
    assert totals["waitlist offers"] > schedules // 20  # and units did go to waiting customers
