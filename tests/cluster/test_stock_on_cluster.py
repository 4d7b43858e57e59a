"""Live stock on a real 3-master Redis Cluster: every script and pipeline across hash slots,
scripts missing on a master (as after a failover), replica-acknowledged writes, and a master
killed under load."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

import pytest

from app.core.errors import Unavailable
from app.inventory import keys as K
from app.inventory.errors import NotLoaded, SoldOut
from app.inventory.stock import DealState, LiveStock, Order
from app.wiring import stock_redis
from tests.support.cluster import RedisClusterServers
from tests.support.servers import wait_for

NOW = 1_800_000_000_000


def state(deal_id: int, quantity: int = 10) -> DealState:
    return DealState(deal_id, 1, quantity, 0, 500, "USD", 0, 0, (), (), "Lamp", f"SKU-{deal_id}")


def stock_on(cluster: RedisClusterServers, **kwargs) -> LiveStock:
    return LiveStock(stock_redis({"REDIS_CLUSTER_NODES": cluster.startup_nodes}), **kwargs)


def masters_of(cluster: RedisClusterServers, deal_ids) -> set[int]:
    return {cluster.node_for_key(K.deal_keys(d).inv).port for d in deal_ids}


DEALS = list(range(1, 13))


def test_every_operation_works_with_deals_on_every_master(redis_cluster, cluster_client):
    assert len(masters_of(redis_cluster, DEALS)) == 3  # the deals really are spread out
    stock = stock_on(redis_cluster)
    for deal_id in DEALS:
        stock.load(state(deal_id))
        stock.reserve(Order(deal_id, 1, f"hold-{deal_id}", "n", 2), NOW, NOW + 1000)
        stock.buy(Order(deal_id, 1, f"buy-{deal_id}", "n", 3, "u"), NOW)
        stock.claim(Order(deal_id, 1, f"hold-{deal_id}", "n", 0, "u2"), NOW)
        stock.reserve(Order(deal_id, 1, f"late-{deal_id}", "n", 1), NOW, NOW + 1000)
    snapshots = stock.snapshots(DEALS, NOW)
    assert {d: (s.available, s.reserved, s.sold) for d, s in snapshots.items()} == {d: (4, 1, 5) for d in DEALS}
    assert set(stock.generations(DEALS).values()) == {s.gen for s in snapshots.values()}
    # The sweep: the index across slots, the scripts pipelined across masters.
    assert stock.repair_index() == len(DEALS)  # (the purchase service indexes each new hold)
    due = stock.due(NOW + 2000, 100)
    assert sorted(d for d, _ in due) == DEALS
    results = stock.sweep_many(DEALS, NOW + 2000, 100)
    assert [(r.holds, r.units) for r in results] == [(1, 1)] * len(DEALS)
    stock.reindex([(d, score, r.next_end_ms) for (d, score), r in zip(sorted(due), results, strict=True)])
    assert stock.due(NOW + 10**9, 100) == []
    assert {d: s.available for d, s in stock.snapshots(DEALS, NOW).items()} == {d: 5 for d in DEALS}
    stock.invalidate(DEALS[0])
    with pytest.raises(NotLoaded):
        stock.reserve(Order(DEALS[0], 1, "x", "n", 1), NOW, NOW + 1000)


@pytest.mark.parametrize("min_replicas", [0, 1])
def test_takes_on_deals_of_every_master_go_together(redis_cluster, min_replicas):
    """A cart's takes: one pipeline across the masters (one by one, each acknowledged, with
    replicas required); each answers on its own, and a second send finds each take."""
    stock = stock_on(redis_cluster, min_replicas=min_replicas)
    for deal_id in DEALS:
        stock.load(state(deal_id))
    asks = [stock.reserving(Order(d, 1, f"cart-{d}", "n", 11 if d == DEALS[5] else 2), NOW, NOW + 1000) for d in DEALS]
    got = stock.take_many(asks)
    assert [type(g).__name__ for g in got] == ["SoldOut" if d == DEALS[5] else "Taken" for d in DEALS]
    again = stock.take_many(asks)
    assert [type(g).__name__ for g in again] == ["SoldOut" if d == DEALS[5] else "Found" for d in DEALS]
    assert {d: s.reserved for d, s in stock.snapshots(DEALS, NOW).items()} == {
        d: 0 if d == DEALS[5] else 2 for d in DEALS
    }


@pytest.mark.parametrize("min_replicas", [0, 1])
def test_scripts_missing_on_the_masters_are_loaded_again(redis_cluster, cluster_client, min_replicas):
    """A promoted replica has no scripts: EVALSHA answers NOSCRIPT, on direct calls and in
    pipelines alike, and the call still succeeds."""
    stock = stock_on(redis_cluster, min_replicas=min_replicas)
    for deal_id in DEALS:
        stock.load(state(deal_id))
    cluster_client.script_flush()  # on every master
    stock.reserve(Order(DEALS[0], 1, "a", "n", 1), NOW, NOW + 1000)
    cluster_client.script_flush()
    assert all(s.reserved == (1 if d == DEALS[0] else 0) for d, s in stock.snapshots(DEALS, NOW).items())
    cluster_client.script_flush()
    assert sum(r.units for r in stock.sweep_many(DEALS, NOW + 2000, 100)) == 1


def test_a_take_the_replica_does_not_acknowledge_is_refused_and_the_deal_dropped(redis_cluster, cluster_client):
    stock = stock_on(redis_cluster, min_replicas=1, replica_wait_ms=200)
    deal_id = DEALS[0]
    stock.load(state(deal_id))
    stock.reserve(Order(deal_id, 1, "acknowledged", "n", 1), NOW, NOW + 1000)  # the replica answers: fine
    master = redis_cluster.node_for_key(K.deal_keys(deal_id).inv)
    replica = redis_cluster.replica_of(master)
    os.kill(replica.process.pid, signal.SIGSTOP)  # connected, but it acknowledges nothing
    try:
        with pytest.raises(Unavailable, match="replicas acknowledged"):
            stock.reserve(Order(deal_id, 1, "unacknowledged", "n", 1), NOW, NOW + 1000)
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    # The write may yet reach the replica, or be lost with its master: either way it is not
    # trusted. The live state is gone, so the next request rebuilds it from SQL.
    assert not stock.is_loaded(deal_id)


@pytest.mark.parametrize("memo", [False, True], ids=["script", "sold-out-memo"])
def test_a_keyed_refusal_the_replica_does_not_acknowledge_is_not_given(redis_cluster, cluster_client, memo):
    # A request others may retry (a keyed one: `since_ms`) has its refusal noted, so no earlier
    # request with its key takes after it (lua/lib.lua note_refusal). A note a failover may lose
    # cannot be answered: 503, and the client's retry is decided afresh.
    stock = stock_on(redis_cluster, min_replicas=1, replica_wait_ms=200, sold_out_ttl_ms=60_000 if memo else 0)
    deal_id = DEALS[1]
    stock.load(state(deal_id, quantity=1))
    stock.reserve(Order(deal_id, 1, "last-unit", "n", 1), NOW, NOW + 60_000)
    replica = redis_cluster.replica_of(redis_cluster.node_for_key(K.deal_keys(deal_id).inv))
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(SoldOut):  # a fresh token's refusal writes nothing: answered as ever
            stock.reserve(Order(deal_id, 1, "fresh", "n", 1), NOW, NOW + 60_000)
        with pytest.raises(Unavailable, match="replicas acknowledged"):
            stock.reserve(Order(deal_id, 1, "keyed", "n", 1, since_ms=NOW), NOW, NOW + 60_000)
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    stock.load(replace(state(deal_id, quantity=1), sold=1))  # the unit held, then sold
    with pytest.raises(SoldOut):  # with the replica back, the refusal is given
        stock.reserve(Order(deal_id, 1, "keyed", "n", 1, since_ms=NOW + 1), NOW + 1, NOW + 60_000)


def test_a_killed_master_fails_over_without_losing_acknowledged_holds():
    cluster = RedisClusterServers().start()
    try:
        stock = stock_on(cluster, min_replicas=1)
        deal_id = DEALS[0]
        stock.load(state(deal_id, quantity=100))
        for i in range(20):
            stock.reserve(Order(deal_id, 1, f"hold-{i}", "n", 1), NOW, NOW + 60_000)
        cluster.node_for_key(K.deal_keys(deal_id).inv).kill()
        refused = []

        def reserved():
            try:
                return stock.reserve(Order(deal_id, 1, "after-failover", "n", 1), NOW, NOW + 60_000)
            except Unavailable as error:  # what the API answers as 503, until the replica takes over
                refused.append(str(error))
                time.sleep(0.05)
                return None

        wait_for(reserved, 30, "a reserve to succeed on the promoted replica", interval=0)
        snapshot = stock.snapshot(deal_id, NOW)
        assert (snapshot.reserved, snapshot.holds, snapshot.available) == (21, 21, 79)
        assert refused  # requests during the failover were refused, not lost
        # With no replica left, the new master still takes writes (nobody could fail over to a
        # copy without them).
        stock.reserve(Order(deal_id, 1, "no-replica-left", "n", 1), NOW, NOW + 60_000)
    finally:
        cluster.stop()
