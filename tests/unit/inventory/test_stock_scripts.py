"""The Lua scripts, against a real redis-server, with the clock passed in."""

from __future__ import annotations

import threading

import pytest

from app.core.errors import RequestInProgress, Unavailable
from app.inventory import keys as K
from app.inventory.errors import (
    DealNotFound,
    InconsistentState,
    NotHeld,
    NotLoaded,
    OverPurchaseLimit,
    OverUserLimit,
    PriceChanged,
    SoldOut,
)
from app.inventory.scripts import Code, UnknownReply, code_of
from app.inventory.stock import DealState, Found, LiveStock, Order, Taken

T0 = 1_800_000_000_000  # ms
TTL = 300_000
ACCOUNT = 7
N = "attempt-1"  # the nonce of the attempt a test does not care about


def state(deal_id=1, quantity=10, sold=0, holds=(), users=(), max_per_purchase=0, max_per_user=0, price=500):
    return DealState(
        deal_id=deal_id,
        account_id=ACCOUNT,
        quantity=quantity,
        sold=sold,
        price=price,
        currency="USD",
        max_per_purchase=max_per_purchase,
        max_per_user=max_per_user,
        holds=tuple(holds),
        users=tuple(users),
    )


@pytest.fixture
def stock(redis_client) -> LiveStock:
    return LiveStock(redis_client)


def numbers(stock, deal_id=1, now=T0):
    snap = stock.snapshot(deal_id, now)
    assert snap.available + snap.reserved + snap.sold == snap.quantity
    return snap.available, snap.reserved, snap.sold


def test_every_script_refuses_a_deal_that_is_not_loaded(stock):
    with pytest.raises(NotLoaded):
        stock.reserve(Order(1, ACCOUNT, "t", N, 1), T0, T0 + TTL)
    with pytest.raises(NotLoaded):
        stock.claim(Order(1, ACCOUNT, "t", N, 1, "u"), T0)
    with pytest.raises(NotLoaded):
        stock.buy(Order(1, ACCOUNT, "t", N, 1), T0)
    with pytest.raises(NotLoaded):
        stock.extend(1, "t", T0, T0 + TTL)
    with pytest.raises(NotLoaded):
        stock.snapshot(1, T0)
    assert stock.release(1, "t") == 0
    assert stock.give_back(1, "t", N, T0) == 0


def test_reserve_takes_units_until_sold_out(stock):
    stock.load(state(quantity=3))
    stock.reserve(Order(1, ACCOUNT, "a", N, 2), T0, T0 + TTL)
    assert numbers(stock) == (1, 2, 0)
    with pytest.raises(SoldOut) as error:
        stock.reserve(Order(1, ACCOUNT, "b", N, 2), T0, T0 + TTL)
    assert error.value.available == 1
    assert numbers(stock) == (1, 2, 0)


def test_reserve_of_another_accounts_deal_is_not_found(stock):
    stock.load(state())
    with pytest.raises(DealNotFound):
        stock.reserve(Order(1, ACCOUNT + 1, "a", N, 1), T0, T0 + TTL)
    assert numbers(stock) == (10, 0, 0)


def test_reserve_respects_max_per_purchase(stock):
    stock.load(state(max_per_purchase=2))
    with pytest.raises(OverPurchaseLimit) as error:
        stock.reserve(Order(1, ACCOUNT, "a", N, 3), T0, T0 + TTL)
    assert error.value.limit == 2
    assert numbers(stock) == (10, 0, 0)


def test_reserve_with_the_same_token_twice_holds_once(stock):
    stock.load(state())
    stock.reserve(Order(1, ACCOUNT, "a", N, 4), T0, T0 + TTL)
    stock.reserve(Order(1, ACCOUNT, "a", N, 4), T0, T0 + TTL)
    assert numbers(stock) == (6, 4, 0)


def test_a_hold_past_its_end_is_returned_by_the_next_reserve(stock):
    stock.load(state(quantity=2))
    stock.reserve(Order(1, ACCOUNT, "a", N, 2), T0, T0 + TTL)
    with pytest.raises(SoldOut):
        stock.reserve(Order(1, ACCOUNT, "b", N, 1), T0 + TTL - 1, T0 + 2 * TTL)
    # At the end instant the hold is over, and this reserve takes its units itself.
    stock.reserve(Order(1, ACCOUNT, "b", N, 2), T0 + TTL, T0 + 2 * TTL)
    assert numbers(stock, now=T0 + TTL) == (0, 2, 0)
    assert set(stock.holds(1)) == {"b"}


def test_claim_turns_the_hold_into_sold_units(stock):
    stock.load(state())
    stock.reserve(Order(1, ACCOUNT, "a", N, 3), T0, T0 + TTL)
    take = stock.claim(Order(1, ACCOUNT, "a", N, 3, "u"), T0)
    assert take.from_hold and take.units == 3
    assert numbers(stock) == (7, 0, 3)
    assert stock.holds(1) == {}


def test_claim_without_a_hold_takes_from_stock_or_is_sold_out(stock):
    stock.load(state(quantity=3))
    take = stock.claim(Order(1, ACCOUNT, "gone", N, 2, "u"), T0)
    assert not take.from_hold
    assert numbers(stock) == (1, 0, 2)
    with pytest.raises(SoldOut):
        stock.claim(Order(1, ACCOUNT, "gone-too", N, 2, "u"), T0)
    assert numbers(stock) == (1, 0, 2)


def test_claim_enforces_max_per_user_across_purchases(stock):
    stock.load(state(max_per_user=3))
    stock.reserve(Order(1, ACCOUNT, "a", N, 2), T0, T0 + TTL)
    stock.reserve(Order(1, ACCOUNT, "b", N, 2), T0, T0 + TTL)
    stock.claim(Order(1, ACCOUNT, "a", N, 2, "alice"), T0)
    with pytest.raises(OverUserLimit) as error:
        stock.claim(Order(1, ACCOUNT, "b", N, 2, "alice"), T0)
    assert (error.value.limit, error.value.already) == (3, 2)
    stock.claim(Order(1, ACCOUNT, "b", N, 2, "bob"), T0)
    assert stock.user_units(1) == {"alice": 2, "bob": 2}


def test_release_returns_units_exactly_once(stock):
    stock.load(state())
    stock.reserve(Order(1, ACCOUNT, "a", N, 4), T0, T0 + TTL)
    assert stock.release(1, "a") == 4
    assert stock.release(1, "a") == 0
    assert numbers(stock) == (10, 0, 0)


def test_release_after_the_sweep_returns_nothing_more(stock):
    stock.load(state())
    stock.reserve(Order(1, ACCOUNT, "a", N, 4), T0, T0 + TTL)
    stock.sweep_many([1], T0 + TTL, 100)
    assert stock.release(1, "a") == 0
    assert numbers(stock, now=T0 + TTL) == (10, 0, 0)


def test_buy_checks_price_and_takes_stock(stock):
    stock.load(state(quantity=2, price=500))
    with pytest.raises(PriceChanged) as error:
        stock.buy(Order(1, ACCOUNT, "p1", N, 1, "u"), T0, 400)
    assert error.value.price == 500
    stock.buy(Order(1, ACCOUNT, "p2", N, 2, "u"), T0, 500)
    assert numbers(stock) == (0, 0, 2)
    with pytest.raises(SoldOut):
        stock.buy(Order(1, ACCOUNT, "p3", N, 1, "u"), T0, 500)


def test_give_back_undoes_only_its_own_attempts_take_and_only_once(stock):
    stock.load(state(quantity=5))
    stock.buy(Order(1, ACCOUNT, "b", "mine", 2), T0)
    assert stock.give_back(1, "b", "someone-else", T0) == 0
    assert stock.give_back(1, "b", "mine", T0) == 2
    assert stock.give_back(1, "b", "mine", T0) == 0  # sent twice: nothing more
    assert numbers(stock) == (5, 0, 0)
    stock.buy(Order(1, ACCOUNT, "c", "mine", 2), T0)
    stock.load(state(quantity=5, sold=2))  # a rebuild that already counts the buy
    assert stock.give_back(1, "c", "mine", T0) == 0
    assert numbers(stock) == (3, 0, 2)


def test_give_back_of_a_claim_puts_the_hold_back_while_it_has_time_left(stock):
    stock.load(state(quantity=5, max_per_user=5))
    stock.reserve(Order(1, ACCOUNT, "a", "r", 2), T0, T0 + TTL)
    stock.claim(Order(1, ACCOUNT, "a", "c", 2, "alice"), T0)
    assert numbers(stock) == (3, 0, 2)
    assert stock.give_back(1, "a", "c", T0 + 10) == 2
    assert numbers(stock, now=T0 + 10) == (3, 2, 0)
    assert stock.holds(1) == {"a": (2, T0 + TTL)}
    assert stock.user_units(1) == {"alice": 0}
    stock.claim(Order(1, ACCOUNT, "a", "c2", 2, "alice"), T0 + 20)
    assert stock.give_back(1, "a", "c2", T0 + TTL) == 2  # the hold's time is up: back to stock
    assert numbers(stock, now=T0 + TTL) == (5, 0, 0)


def test_a_take_found_by_another_attempt_can_be_adopted_once_and_then_is_not_its_makers(stock):
    stock.load(state(quantity=5))
    stock.reserve(Order(1, ACCOUNT, "a", "first", 2), T0, T0 + TTL)
    found = stock.reserve(Order(1, ACCOUNT, "a", "retry", 2), T0 + 3000, T0 + TTL)
    assert isinstance(found, Found)
    assert (found.kind, found.units, found.nonce, found.born_ms) == ("hold", 2, "first", T0)
    assert stock.adopt(found, "retry", T0 + 3000) is True
    assert stock.adopt(found, "retry", T0 + 3000) is True  # the same call sent twice
    assert stock.adopt(found, "third", T0 + 3000) is False  # "first" no longer owns it
    assert stock.give_back(1, "a", "first", T0) == 0  # the maker's undo no longer applies
    assert numbers(stock) == (3, 2, 0)
    assert stock.give_back(1, "a", "retry", T0) == 2


def test_a_hold_loaded_from_sql_is_nobodys_to_adopt_or_give_back(stock):
    stock.load(state(quantity=5, holds=[("a", 2, T0 + TTL, "", None)]))
    found = stock.reserve(Order(1, ACCOUNT, "a", "retry", 2), T0, T0 + TTL)
    assert isinstance(found, Found) and found.nonce == ""
    assert stock.adopt(found, "retry", T0) is False
    assert stock.give_back(1, "a", "", T0) == 0
    assert numbers(stock) == (3, 2, 0)


@pytest.mark.parametrize("name", ["reserve", "buy", "claim", "adopt", "give_back", "release", "extend", "forget"])
def test_every_script_sent_twice_has_the_effect_of_once(stock, redis_client, name):
    """What a client library does after a connection error: it sends the same command again
    though the first one ran. Each script, run twice with the same arguments, leaves the live
    state as running it once did."""
    stock.load(state(quantity=10, max_per_user=9))
    stock.reserve(Order(1, ACCOUNT, "h", "r", 2), T0, T0 + TTL)
    found = stock.reserve(Order(1, ACCOUNT, "h", "other", 2), T0, T0 + TTL)
    stock.claim(Order(1, ACCOUNT, "m", "c", 3, "bob"), T0)
    calls = {
        "reserve": lambda: stock.reserve(Order(1, ACCOUNT, "n", "x", 2), T0, T0 + TTL),
        "buy": lambda: stock.buy(Order(1, ACCOUNT, "n", "x", 2, "ann"), T0),
        "claim": lambda: stock.claim(Order(1, ACCOUNT, "h", "x", 2, "ann"), T0),
        "adopt": lambda: stock.adopt(found, "x", T0),
        "give_back": lambda: stock.give_back(1, "m", "c", T0),
        "release": lambda: stock.release(1, "h"),
        "extend": lambda: stock.extend(1, "h", T0, T0 + 2 * TTL),
        "forget": lambda: stock.forget(1, ["m"]),
    }
    calls[name]()
    once = {key: redis_client.dump(key) for key in K.deal_keys(1)}
    calls[name]()
    assert {key: redis_client.dump(key) for key in K.deal_keys(1)} == once
    numbers(stock)


def test_load_refuses_a_state_with_negative_stock_and_keeps_what_was_there(stock):
    stock.load(state(quantity=5, sold=1))
    with pytest.raises(InconsistentState) as error:
        stock.load(state(quantity=5, sold=4, holds=[("a", 2, T0 + TTL, "", None)]))
    assert error.value.available == -1
    assert numbers(stock) == (4, 0, 1)


def test_load_sent_twice_loads_once(stock, redis_client, monkeypatch):
    """A second run of the same load (same generation) must not wipe takes made after the first."""
    import secrets

    monkeypatch.setattr(secrets, "token_hex", lambda n=8: "fixed-generation")
    stock.load(state(quantity=5))
    stock.reserve(Order(1, ACCOUNT, "a", N, 2), T0, T0 + TTL)
    stock.load(state(quantity=5))
    assert numbers(stock) == (3, 2, 0)


def test_extend_moves_a_live_hold_and_refuses_an_ended_one(stock):
    stock.load(state())
    stock.reserve(Order(1, ACCOUNT, "a", N, 1), T0, T0 + TTL)
    assert stock.extend(1, "a", T0 + 10, T0 + 2 * TTL)[1] == T0 + 2 * TTL
    assert stock.extend(1, "a", T0 + 10, T0 + TTL)[1] == T0 + 2 * TTL  # never shortened
    with pytest.raises(NotHeld):
        stock.extend(1, "a", T0 + 2 * TTL, T0 + 3 * TTL)
    with pytest.raises(NotHeld):
        stock.extend(1, "nobody", T0, T0 + TTL)


def test_load_rebuilds_holds_sold_and_users(stock):
    stock.load(
        state(
            quantity=10,
            sold=3,
            holds=[("a", 2, T0 + TTL, "", None), ("b", 1, T0 + 2 * TTL, "", None)],
            users=[("alice", 3)],
            max_per_user=4,
        )
    )
    assert numbers(stock) == (4, 3, 3)
    assert stock.holds(1) == {"a": (2, T0 + TTL), "b": (1, T0 + 2 * TTL)}
    with pytest.raises(OverUserLimit):
        stock.buy(Order(1, ACCOUNT, "c", N, 2, "alice"), T0)


def test_sweep_returns_only_ended_holds_and_reports_the_next_end(stock):
    stock.load(state())
    stock.reserve(Order(1, ACCOUNT, "a", N, 1), T0, T0 + TTL)
    stock.reserve(Order(1, ACCOUNT, "b", N, 2), T0 + 1000, T0 + 1000 + TTL)
    [result] = stock.sweep_many([1], T0 + TTL, 100)
    assert (result.holds, result.units, result.next_end_ms) == (1, 1, T0 + 1000 + TTL)
    [result] = stock.sweep_many([1], T0 + TTL, 100)
    assert (result.holds, result.units) == (0, 0)
    assert numbers(stock, now=T0 + TTL) == (8, 2, 0)


class RoundTrips:
    """Counts what the client sends: one packed send per command, or per pipeline."""

    def __init__(self, monkeypatch) -> None:
        import redis.connection

        self.sent = 0
        send = redis.connection.AbstractConnection.send_packed_command

        def counted(connection, command, check_health=True):
            self.sent += 1
            return send(connection, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)


def test_snapshots_and_sweeps_of_many_deals_are_one_round_trip_each(stock, monkeypatch):
    """A script in a pipeline is a plain EVALSHA: no SCRIPT EXISTS asked first."""
    for deal_id in (1, 2, 3):
        stock.load(state(deal_id))
    stock.scripts.load_all()  # as on a server that ran them before
    trips = RoundTrips(monkeypatch)
    assert {d: s.available for d, s in stock.snapshots([1, 2, 3], T0).items()} == {1: 10, 2: 10, 3: 10}
    assert trips.sent == 1
    stock.sweep_many([1, 2, 3], T0, 100)
    assert trips.sent == 2


def test_takes_on_several_deals_are_one_round_trip_and_each_answers_on_its_own(stock, monkeypatch):
    for deal_id in (1, 2, 3):
        stock.load(state(deal_id, quantity=2))
    stock.scripts.load_all()
    trips = RoundTrips(monkeypatch)
    asks = [stock.reserving(Order(d, ACCOUNT, f"t{d}", N, 3 if d == 2 else 1), T0, T0 + TTL) for d in (1, 2, 3)]
    first, second, third = stock.take_many(asks)
    assert trips.sent == 1
    assert isinstance(first, Taken) and isinstance(third, Taken) and (first.units, third.units) == (1, 1)
    assert isinstance(second, SoldOut)  # the caller gives the others back (Protocol.take_all)
    assert [numbers(stock, d) for d in (1, 2, 3)] == [(1, 1, 0), (2, 0, 0), (1, 1, 0)]
    # Sent again (a retry of the same attempt), each finds its own take.
    assert [type(got) for got in stock.take_many(asks)] == [Found, SoldOut, Found]
    assert [numbers(stock, d) for d in (1, 2, 3)] == [(1, 1, 0), (2, 0, 0), (1, 1, 0)]


def test_a_take_the_sold_out_memo_refuses_stops_the_others_before_they_run(redis_client, monkeypatch):
    stock = LiveStock(redis_client, sold_out_ttl_ms=60_000)
    for deal_id in (1, 2):
        stock.load(state(deal_id, quantity=1))
    stock.reserve(Order(2, ACCOUNT, "last", N, 1), T0, T0 + TTL)  # the memo learns deal 2 sold out
    trips = RoundTrips(monkeypatch)
    asks = [stock.reserving(Order(d, ACCOUNT, f"t{d}", N, 1), T0, T0 + TTL) for d in (1, 2)]
    first, second = stock.take_many(asks)
    assert first is None and isinstance(second, SoldOut) and trips.sent == 0
    assert numbers(stock, 1) == (1, 0, 0)


def test_pipelines_load_scripts_the_server_lost(stock, redis_client):
    """A restarted server has no scripts: a pipeline answered NOSCRIPT loads them and runs again."""
    for deal_id in (1, 2):
        stock.load(state(deal_id))
    stock.reserve(Order(1, ACCOUNT, "a", N, 2), T0, T0 + TTL)
    redis_client.script_flush()
    assert {d: s.reserved for d, s in stock.snapshots([1, 2], T0).items()} == {1: 2, 2: 0}
    redis_client.script_flush()
    assert [r.units for r in stock.sweep_many([1, 2], T0 + TTL, 100)] == [2, 0]


def test_real_ttl_expiry_by_wall_clock(stock):
    """With the real clock: a 300 ms hold is back in stock once its end has passed."""
    import time

    from app.core.timeutil import now_ms

    stock.load(state(quantity=1))
    start = now_ms()
    stock.reserve(Order(1, ACCOUNT, "a", N, 1), start, start + 300)
    with pytest.raises(SoldOut):
        stock.reserve(Order(1, ACCOUNT, "b", N, 1), now_ms(), now_ms() + 300)
    deadline = time.monotonic() + 5
    while now_ms() <= start + 300:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stock.reserve(Order(1, ACCOUNT, "b", N, 1), now_ms(), now_ms() + 300)
    assert set(stock.holds(1)) == {"b"}


def test_sweep_index_protocol_keeps_every_hold_visible(stock, redis_client):
    """The index must never lose a deal with holds: after a sweep that emptied a deal, a new
    hold (whose reserve found the deal empty) is due at its own end."""
    stock.load(state())
    stock.reserve(Order(1, ACCOUNT, "a", N, 1), T0, T0 + TTL)
    stock.index(1, T0 + TTL)
    due = stock.due(T0 + TTL, 10)
    assert due == [(1, float(T0 + TTL))]
    results = stock.sweep_many([1], T0 + TTL, 100)
    # A reserve lands between the sweep script and the index update.
    take = stock.reserve(Order(1, ACCOUNT, "b", N, 1), T0 + TTL, T0 + 2 * TTL)
    assert take.needs_index
    stock.index(1, T0 + 2 * TTL)  # no-op: the old, lower score is still there
    stock.reindex([(1, due[0][1], results[0].next_end_ms)])
    assert redis_client.zscore(K.SWEEP_INDEX, "1") == T0 + 2 * TTL


def test_concurrent_reserves_never_oversell(redis_url, redis_client):
    """100 threads, 5 units: exactly 5 holds."""
    import redis as redis_lib

    LiveStock(redis_client).load(state(quantity=5))
    results: list[str] = []
    lock = threading.Lock()

    def buyer(i: int) -> None:
        with redis_lib.Redis.from_url(redis_url, decode_responses=True) as client:
            try:
                LiveStock(client).reserve(Order(1, ACCOUNT, f"t{i}", N, 1), T0, T0 + TTL)
                outcome = "held"
            except SoldOut:
                outcome = "sold_out"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=buyer, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("held") == 5
    assert results.count("sold_out") == 95
    assert numbers(LiveStock(redis_client)) == (0, 5, 0)


def test_an_unknown_reply_code_raises():
    with pytest.raises(UnknownReply):
        code_of([99])
    assert code_of([0]) is Code.OK


def test_a_retried_claim_takes_nothing_more(stock):
    """The first claim took the units but its process died before the SQL commit; the retry
    finds them taken (a mark, with the attempt that made it), from a hold or from stock alike."""
    stock.load(state(quantity=5))
    stock.reserve(Order(1, ACCOUNT, "a", N, 2), T0, T0 + TTL)
    first = stock.claim(Order(1, ACCOUNT, "a", "c1", 2, "u"), T0)
    retry = stock.claim(Order(1, ACCOUNT, "a", "c2", 2, "u"), T0 + 5)
    assert isinstance(first, Taken) and first.from_hold
    assert isinstance(retry, Found) and (retry.kind, retry.units, retry.nonce, retry.from_hold) == (
        "mark",
        2,
        "c1",
        True,
    )
    stock.claim(Order(1, ACCOUNT, "gone", "c1", 1, "u"), T0)
    stock.claim(Order(1, ACCOUNT, "gone", "c2", 1, "u"), T0)
    assert numbers(stock) == (2, 0, 3)
    assert stock.marks(1) == {"a": 2, "gone": 1}
    stock.load(state(quantity=5, sold=3))  # a rebuild: SQL is the truth again
    assert stock.marks(1) == {}


def test_the_memo_refuses_only_tokens_with_nothing_on_the_deal_read_together(redis_client):
    """Keyed writes of a process ask together whether their tokens hold anything (one held.lua
    run per deal for all of them): each still gets its own token's answer."""
    stock = LiveStock(redis_client, sold_out_ttl_ms=60_000)
    stock.load(state(deal_id=1, quantity=2))
    stock.load(state(deal_id=2, quantity=1))
    stock.reserve(Order(1, ACCOUNT, "holds", N, 2), T0, T0 + TTL)  # a hold sold deal 1 out
    stock.buy(Order(2, ACCOUNT, "bought", N, 1, "u"), T0)  # a mark sold deal 2 out
    asks = [(1, "holds"), (1, "fresh"), (2, "bought"), (2, "holds"), (2, "fresh-2")]
    assert stock._held_many([(*ask, T0) for ask in asks]) == {(1, "holds", T0): True, (2, "bought", T0): True}

    answers: dict[tuple[int, str], str] = {}

    def ask(deal_id: int, token: str) -> None:
        try:
            stock.refuse_from_memory(deal_id, ACCOUNT, 1, token, T0)
            answers[(deal_id, token)] = "to the script"
        except SoldOut:
            answers[(deal_id, token)] = "sold out"

    threads = [threading.Thread(target=ask, args=pair) for pair in asks * 20]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == {
        (1, "holds"): "to the script",
        (1, "fresh"): "sold out",
        (2, "bought"): "to the script",
        (2, "holds"): "sold out",
        (2, "fresh-2"): "sold out",
    }


def test_a_claim_for_another_customer_never_adopts_a_mark(stock):
    """The first claim may be only slow and commit after all: the units counted against the
    cap stay with its customer, and the other customer is told to retry."""
    stock.load(state(quantity=5, max_per_user=5))
    stock.reserve(Order(1, ACCOUNT, "a", "r", 2), T0, T0 + TTL)
    stock.claim(Order(1, ACCOUNT, "a", "ann's", 2, "ann"), T0)
    found = stock.claim(Order(1, ACCOUNT, "a", "bob's", 2, "bob"), T0 + 3000)
    assert isinstance(found, Found) and (found.kind, found.user_id) == ("mark", "ann")
    with pytest.raises(RequestInProgress):
        stock.adopt(found, "bob's", T0 + 3000, "bob")
    assert stock.give_back(1, "a", "ann's", T0) == 2  # still the first attempt's
    assert stock.user_units(1) == {"ann": 0}
    stock.claim(Order(1, ACCOUNT, "a", "ann's", 2, "ann"), T0)
    assert stock.adopt(found, "ann's retry", T0 + 3000, "ann") is True  # the same customer's retry
    assert stock.user_units(1) == {"ann": 2}


def test_a_refused_shared_token_refuses_the_requests_that_began_before_it(stock):
    """Two requests with one key (a checkout's retry while its first request runs on): once one
    is told sold out, the other takes nothing, even after units come back and a rebuild; a
    request with the key that begins after the refusal is decided afresh."""
    stock.load(state(quantity=1))
    stock.reserve(Order(1, ACCOUNT, "other", N, 1), T0, T0 + TTL)
    first, retry = T0 - 5_000, T0 - 1_000  # when each request began
    with pytest.raises(SoldOut):
        stock.reserve(Order(1, ACCOUNT, "key", "retry", 1, since_ms=retry), T0, T0 + TTL)
    stock.release(1, "other")
    stock.load(state(quantity=1))  # a rebuild keeps what was answered
    for began in (first, retry, T0):
        with pytest.raises(SoldOut):
            stock.reserve(Order(1, ACCOUNT, "key", "first-again", 1, since_ms=began), T0 + 10, T0 + TTL)
        with pytest.raises(SoldOut):
            stock.buy(Order(1, ACCOUNT, "key", "first-again", 1, since_ms=began), T0 + 10)
    assert numbers(stock, now=T0 + 10) == (1, 0, 0)
    later = stock.reserve(Order(1, ACCOUNT, "key", "later", 1, since_ms=T0 + 1), T0 + 10, T0 + TTL)
    assert isinstance(later, Taken)
    # A token made for one request alone (since 0) leaves no refusal behind.
    with pytest.raises(SoldOut):
        stock.reserve(Order(1, ACCOUNT, "fresh", "a", 1), T0 + 20, T0 + TTL)
    stock.release(1, "key")
    assert isinstance(stock.reserve(Order(1, ACCOUNT, "fresh", "b", 1), T0 + 30, T0 + TTL), Taken)


def test_a_sold_out_memo_refusal_of_a_shared_token_is_noted_as_the_scripts_are(redis_client):
    stock = LiveStock(redis_client, sold_out_ttl_ms=60_000)
    stock.load(state(quantity=1))
    stock.reserve(Order(1, ACCOUNT, "last", N, 1), T0, T0 + TTL)  # the memo learns it sold out
    with pytest.raises(SoldOut):
        stock.refuse_from_memory(1, ACCOUNT, 1, "key", T0 + 5)
    stock.release(1, "last")
    stock.sold_out.forget(1)
    with pytest.raises(SoldOut):  # the request that began before that refusal
        stock.reserve(Order(1, ACCOUNT, "key", "first", 1, since_ms=T0), T0 + 10, T0 + TTL)
    assert isinstance(stock.reserve(Order(1, ACCOUNT, "key", "new", 1, since_ms=T0 + 6), T0 + 10, T0 + TTL), Taken)


def test_a_request_older_than_the_refusals_kept_is_told_to_retry_and_takes_nothing(stock):
    """Refusals are kept two minutes; a request that began longer ago than that might have
    missed one, so it may not take (a retry is a new request)."""
    stock.load(state(quantity=1))
    with pytest.raises(Unavailable):
        stock.reserve(Order(1, ACCOUNT, "key", N, 1, since_ms=T0 - 120_000), T0, T0 + TTL)
    assert numbers(stock) == (1, 0, 0)
    assert isinstance(stock.reserve(Order(1, ACCOUNT, "key", N, 1, since_ms=T0 - 119_999), T0, T0 + TTL), Taken)


def test_refusals_are_forgotten_after_two_minutes(stock, redis_client):
    stock.load(state(quantity=0))
    for at, token in ((T0, "old"), (T0 + 120_001, "new")):
        with pytest.raises(SoldOut):
            stock.reserve(Order(1, ACCOUNT, token, N, 1, since_ms=at), at, at + TTL)
    assert redis_client.zrange(K.deal_keys(1).refused, 0, -1) == ["new"]


def test_a_refused_keyed_claim_refuses_the_requests_with_its_key_that_began_before_it(stock):
    """A claim's refusals are named by its key (every claim of a purchase has the purchase's
    token): a claim from stock refused sold out stops an earlier request with the key, not a
    claim with another key, nor one with the key that begins later."""
    stock.load(state(quantity=1))
    stock.reserve(Order(1, ACCOUNT, "other", N, 1), T0, T0 + TTL)  # the purchase's hold is gone
    with pytest.raises(SoldOut):
        stock.claim(Order(1, ACCOUNT, "p", "retry", 1, "u", since_ms=T0 - 1_000, claim_key="k"), T0)
    stock.release(1, "other")
    with pytest.raises(SoldOut):  # the key's first request, begun before the refusal
        stock.claim(Order(1, ACCOUNT, "p", "first", 1, "u", since_ms=T0 - 5_000, claim_key="k"), T0 + 10)
    assert numbers(stock, now=T0 + 10) == (1, 0, 0)
    other_key = stock.claim(Order(1, ACCOUNT, "p", "b", 1, "u", since_ms=T0 - 5_000, claim_key="k2"), T0 + 10)
    assert isinstance(other_key, Taken) and numbers(stock, now=T0 + 10) == (0, 0, 1)
    stock.give_back(1, "p", "b", T0 + 10)
    later = stock.claim(Order(1, ACCOUNT, "p", "c", 1, "u", since_ms=T0 + 1, claim_key="k"), T0 + 10)
    assert isinstance(later, Taken)
