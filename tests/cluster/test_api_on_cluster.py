"""The API with live stock on the cluster: a v3 purchase whose products' deals live on
different masters stays all or nothing (each deal's units are taken in turn, and given back
when a later product fails), and a flushed cluster is rebuilt from SQL."""

from __future__ import annotations

import pytest

from app.inventory import keys as K
from app.store.models import Purchase, PurchaseItem
from tests.api.test_v3_stock import count, live, order, post, sql_sold


@pytest.fixture
def app_config(app_config, redis_cluster, cluster_client):
    return {**app_config, "REDIS_CLUSTER_NODES": redis_cluster.startup_nodes, "REDIS_MIN_REPLICAS": 1}


def deals_on_two_masters(api, redis_cluster) -> tuple[dict, dict]:
    first = api.create_deal(title="Lamp", sku="LAMP-1", quantity=5)
    home = redis_cluster.node_for_key(K.deal_keys(first["id"]).inv).port
    for i in range(20):
        second = api.create_deal(title="Bulb", sku=f"BULB-{i}", quantity=1)
        if redis_cluster.node_for_key(K.deal_keys(second["id"]).inv).port != home:
            return first, second
    raise AssertionError("20 deals all on one master")


def test_a_purchase_across_masters_is_all_or_nothing(api, services, redis_cluster):
    assert services.stock.client.__class__.__name__ == "RedisCluster"
    first, second = deals_on_two_masters(api, redis_cluster)
    bulb = second["sku"]
    response = post(
        api,
        order("o-1", {"name": "Lamp", "sku": "LAMP-1", "quantity": 2}, {"name": "Bulb", "sku": bulb, "quantity": 2}),
    )
    assert response.status_code == 409, response.get_json()
    assert response.get_json()["message"] == "Not enough stock for product: Bulb (only 1 left, 2 requested)."
    assert live(services, first["id"]) == (5, 0, 0)  # given back on its own master
    assert sql_sold(services, first["id"]) == 0
    assert count(services, Purchase) == count(services, PurchaseItem) == 0

    response = post(
        api,
        order("o-2", {"name": "Lamp", "sku": "LAMP-1", "quantity": 2}, {"name": "Bulb", "sku": bulb, "quantity": 1}),
    )
    assert response.status_code == 201, response.get_json()
    assert live(services, first["id"]) == (3, 0, 2)
    assert live(services, second["id"]) == (0, 0, 1)
    assert services.rebuilder.check(first["id"]) == [] and services.rebuilder.check(second["id"]) == []


def test_a_flushed_cluster_is_rebuilt_from_sql(api, services, cluster_client):
    deal = api.create_deal(quantity=5)
    held = api.reserved(deal["id"], 2)
    api.buy(deal["id"], 1)
    cluster_client.flushall()  # every master loses everything
    shown = api.deal(deal["id"])
    assert (shown["available"], shown["reserved"], shown["sold"]) == (2, 2, 1)
    assert api.claim(held["id"], "bob").status_code == 200
    assert api.reserve(deal["id"], 3).status_code == 409


def test_the_write_limit_counts_on_the_cluster(app_config, api):
    """The per-account limit is counted on the cluster (`redis+cluster://`), not skipped: a
    limit it could not count would let every write through."""
    from app import create_app
    from tests.conftest import empty_stores
    from tests.support.api import ApiClient

    app = create_app({**app_config, "RATE_LIMIT_WRITES": "3/minute"})
    try:
        services = app.extensions["offer_engine"]
        empty_stores(services)
        _, secret = services.accounts.create("busy")
        limited = ApiClient(app.test_client(), secret)
        deal = limited.create_deal(quantity=10)
        statuses = [limited.reserve(deal["id"], 1).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
    finally:
        app.extensions["offer_engine"].close()


def test_dashboard_and_metrics_read_live_numbers_from_the_cluster(client, api, account, redis_cluster):
    from tests.api.test_dashboard import sign_in
    from tests.api.test_metrics import scrape, value

    client.application.extensions[
        "offer_engine"
    ].accounts.forget_cached()  # account ids restart with each test's tables

    deals = [api.create_deal(title=f"Deal {i}", quantity=10) for i in range(6)]
    assert len({redis_cluster.node_for_key(K.deal_keys(d["id"]).inv).port for d in deals}) > 1
    for deal in deals:
        api.reserved(deal["id"], 2)
    sign_in(client, account[1])
    data = client.get("/dashboard/data.json").get_json()
    assert {d["id"]: (d["available"], d["reserved"]) for d in data["deals"]} == {d["id"]: (8, 2) for d in deals}
    assert len(data["holds"]) == 6
    samples = scrape(client)
    for deal in deals:
        labels = {"deal_id": str(deal["id"]), "account_id": str(account[0])}
        assert value(samples, "offer_engine_deal_reserved_units", **labels) == 2


def test_a_cart_across_masters_is_all_or_nothing(api, services, redis_cluster):
    first, second = deals_on_two_masters(api, redis_cluster)
    items = [{"deal_id": first["id"], "num_bought": 2}, {"deal_id": second["id"], "num_bought": 2}]
    response = api.post("/v1/carts/reserve", {"items": items})
    assert response.status_code == 409 and response.get_json()["error"] == "sold_out"
    assert live(services, first["id"]) == (5, 0, 0)  # given back on its own master
    items[1]["num_bought"] = 1
    cart = api.post("/v1/carts/reserve", {"items": items}).get_json()["cart"]
    assert live(services, first["id"]) == (3, 2, 0) and live(services, second["id"]) == (0, 1, 0)
    claimed = api.put(f"/v1/carts/{cart['id']}/claim", {"user_id": "ann"})
    assert claimed.status_code == 200, claimed.get_json()
    assert live(services, first["id"]) == (3, 0, 2) and live(services, second["id"]) == (0, 0, 1)
    assert services.rebuilder.check(first["id"]) == [] and services.rebuilder.check(second["id"]) == []
