"""Redis or SQL unreachable: 503 in the API's shape with Retry-After, nothing half-written,
/readyz says which; when it comes back the service recovers by itself."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.store.models import Purchase
from tests.support.proxy import CuttableProxy
from tests.support.servers import PostgresDatabase, RedisServer, require_postgres


def assert_503(response):
    assert response.status_code == 503, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "error" and body["error"] == "unavailable"
    assert int(response.headers["Retry-After"]) >= 1


@pytest.fixture
def private_redis():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def app_config(app_config, private_redis):
    return {**app_config, "REDIS_URL": private_redis.url, "RATE_LIMIT_WRITES": "off"}


def purchases(services) -> int:
    with services.db.read() as session:
        return session.scalar(select(func.count()).select_from(Purchase))


def test_redis_down_is_503_and_recovers_when_it_returns(api, client, services, private_redis):
    deal = api.create_deal(quantity=5)
    held = api.reserved(deal["id"], 2)
    private_redis.kill()
    assert_503(api.reserve(deal["id"], 1))
    assert_503(api.buy(deal["id"], 1))
    assert_503(api.claim(held["id"]))
    assert_503(api.get(f"/v1/deals/{deal['id']}"))
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["redis"].startswith("down")
    assert ready.get_json()["checks"]["database"] == "ok"
    assert purchases(services) == 1
    private_redis.start()  # empty, as after a restart without persistence
    assert client.get("/readyz").status_code == 200
    assert api.claim(held["id"]).status_code == 200
    assert api.reserve(deal["id"], 3).status_code == 200
    shown = api.deal(deal["id"])
    assert (shown["available"], shown["reserved"], shown["sold"]) == (0, 3, 2)


@pytest.fixture(scope="module")
def proxied_postgres():
    require_postgres()
    from app.store.schema import upgrade_schema

    database = PostgresDatabase(prefix="oe_down").create()
    upgrade_schema(database.url)
    proxy = CuttableProxy("127.0.0.1", 5432).start()
    yield database.url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), proxy
    proxy.stop()
    database.drop()


def test_sql_down_is_503_takes_nothing_and_recovers(app_config, proxied_postgres):
    from app import create_app
    from tests.conftest import empty_stores
    from tests.support.api import ApiClient

    url, proxy = proxied_postgres
    app = create_app({**app_config, "DATABASE_URL": url, "DB_POOL_TIMEOUT_SECONDS": 2})
    services = app.extensions["offer_engine"]
    empty_stores(services)
    try:
        _, secret = services.accounts.create("acme")
        api = ApiClient(app.test_client(), secret)
        deal = api.create_deal(quantity=3)
        held = api.reserved(deal["id"], 1)
        api.buy(deal["id"], 2)  # sold out now
        live_before = services.stock.snapshot(deal["id"], 0)

        proxy.cut()
        assert_503(api.claim(held["id"]))
        assert_503(api.patch(f"/v1/deals/{deal['id']}", {"quantity": 10}))
        # Sold out is known from Redis alone: that answer needs no SQL.
        assert api.reserve(deal["id"], 1).status_code == 409
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 503 and ready.get_json()["checks"]["database"].startswith("down")
        live_during = services.stock.snapshot(deal["id"], 0)
        assert (live_during.available, live_during.reserved, live_during.sold) == (
            live_before.available,
            live_before.reserved,
            live_before.sold,
        )

        proxy.restore()
        assert app.test_client().get("/readyz").status_code == 200
        assert api.claim(held["id"]).status_code == 200
        shown = api.deal(deal["id"])
        assert (shown["available"], shown["reserved"], shown["sold"]) == (0, 0, 3)
        assert services.rebuilder.check(deal["id"]) == []
    finally:
        if not proxy.up:
            proxy.restore()
        services.close()


def test_a_successful_take_whose_sql_write_fails_is_undone(app_config, proxied_postgres):
    """The script took the units, then the database went away before the commit: the take is
    given back, so Redis never counts what SQL does not have."""
    from app import create_app
    from tests.conftest import empty_stores
    from tests.support.api import ApiClient

    url, proxy = proxied_postgres
    app = create_app({**app_config, "DATABASE_URL": url, "DB_POOL_TIMEOUT_SECONDS": 2})
    services = app.extensions["offer_engine"]
    empty_stores(services)
    try:
        _, secret = services.accounts.create("acme")
        api = ApiClient(app.test_client(), secret)
        deal = api.create_deal(quantity=3)
        original = services.stock.reserve

        def reserve_then_lose_the_database(*args, **kwargs):
            take = original(*args, **kwargs)
            proxy.cut()
            return take

        services.stock.reserve = reserve_then_lose_the_database
        assert_503(api.reserve(deal["id"], 2))
        services.stock.reserve = original
        live = services.stock.snapshot(deal["id"], 0)
        assert (live.available, live.reserved) == (3, 0)
        proxy.restore()
        assert purchases(services) == 0
        assert api.reserve(deal["id"], 3).status_code == 200
    finally:
        if not proxy.up:
            proxy.restore()
        services.close()


def test_connections_that_died_in_the_pool_cost_no_request(app_config, proxied_postgres):
    """PostgreSQL ended every connection while they sat idle in the pool (a restart, an
    idle-session timeout): the next requests are answered as usual, not with a 503 each."""
    import psycopg

    from app import create_app
    from tests.conftest import empty_stores
    from tests.support.api import ApiClient
    from tests.support.servers import postgres_admin_url

    url, _proxy = proxied_postgres
    app = create_app({**app_config, "DATABASE_URL": url})
    services = app.extensions["offer_engine"]
    empty_stores(services)
    database_name = services.db.engine.url.database

    def end_every_connection() -> int:
        with psycopg.connect(postgres_admin_url(), autocommit=True) as admin:
            ended = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                (database_name,),
            ).fetchone()[0]
        return ended

    try:
        _, secret = services.accounts.create("acme")
        api = ApiClient(app.test_client(), secret)
        deal = api.create_deal(quantity=10)
        held = api.reserved(deal["id"], 1)

        # Without the ping (as before it existed) the first request on a dead connection fails.
        services.db.ping_after_idle = float("inf")
        assert end_every_connection() >= 1
        assert_503(api.claim(held["id"]))

        services.db.ping_after_idle = 0  # every connection counts as idle: no waiting here
        held = api.reserved(deal["id"], 1)
        assert end_every_connection() >= 1
        assert api.claim(held["id"]).status_code == 200
        assert api.reserve(deal["id"], 2).status_code == 200
        assert api.get(f"/v1/deals/{deal['id']}").status_code == 200
        shown = api.deal(deal["id"])
        assert (shown["reserved"], shown["sold"]) == (3, 1)
    finally:
        services.close()
