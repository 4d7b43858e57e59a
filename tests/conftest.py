"""Fixtures: real Redis and real SQL (SQLite, and PostgreSQL when reachable) for every test that
touches them. Each API test runs once per SQL backend; tables and Redis are emptied before it.

Environment:
  TEST_REDIS_URL     use this Redis (its database is flushed) instead of a private server
  TEST_POSTGRES_URL  admin URL of the PostgreSQL server (default postgres@127.0.0.1:5432)
  TEST_DATABASES     comma-separated backends to run (default "sqlite,postgresql")
  CI=true            a missing PostgreSQL or Redis fails the run instead of skipping
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from tests.support.api import ApiClient
from tests.support.clock import ControlledClock
from tests.support.servers import PostgresDatabase, RedisServer, require_postgres, unavailable

BACKENDS = [b.strip() for b in os.environ.get("TEST_DATABASES", "sqlite,postgresql").split(",") if b.strip()]
TABLES = [
    "webhook_deliveries",
    "events",
    "coupons",
    "purchase_items",
    "idempotency_records",
    "purchases",
    "carts",
    "waitlist_entries",
    "deals",
    "webhooks",
    "accounts",
]


@pytest.fixture(scope="session")
def redis_url():
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except redis.exceptions.RedisError as error:
            unavailable(f"TEST_REDIS_URL={url} does not answer: {error}")
        yield url
        return
    server = RedisServer().start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request, tmp_path_factory):
    from app.store.schema import upgrade_schema

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'test.sqlite3'}"
        upgrade_schema(url)
        yield url
    elif request.param == "postgresql":
        require_postgres()
        database = PostgresDatabase().create()
        upgrade_schema(database.url)
        yield database.url
        database.drop()
    else:
        raise ValueError(f"unknown backend {request.param!r}")


def empty_stores(services) -> None:
    with services.db.engine.begin() as connection:
        if services.db.is_sqlite:
            for table in TABLES:
                connection.execute(text(f"DELETE FROM {table}"))
        else:
            connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    services.redis.flushdb()


@pytest.fixture(autouse=True)
def collect_garbage_after():
    """An object a test leaves open (a connection, a socket) warns when it is collected; with
    `filterwarnings = error` that fails the test which left it, here in its teardown, instead of
    whichever later test a collection happens to fall in."""
    yield
    gc.collect()


@pytest.fixture
def clock() -> ControlledClock:
    """A clock the test moves by hand: a test that takes it (directly or through a fixture) gets
    an app and services that read "now" from it."""
    return ControlledClock()


@pytest.fixture
def app_config(request, database_url, redis_url) -> dict:
    """What each test's app is created with; a test may override it before using `app`."""
    config = {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "RQ_REDIS_URL": redis_url,
        "SECRET_KEY": "test",
        "DB_POOL_SIZE": 20,
        # Tests move the clock (holds made "in the past"); the sold-out memo follows the wall
        # clock, so it is off here and tested on its own (tests/api/test_sold_out_memo.py).
        "SOLD_OUT_CACHE_MS": 0,
    }
    if "clock" in request.fixturenames:
        config["CLOCK"] = request.getfixturevalue("clock")
    return config


@pytest.fixture
def app(app_config):
    from app import create_app

    app = create_app(app_config)
    empty_stores(app.extensions["offer_engine"])
    yield app
    app.extensions["offer_engine"].close()


@pytest.fixture
def services(app):
    return app.extensions["offer_engine"]


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def account(services):
    """(account id, secret) of a fresh account."""
    ref, secret = services.accounts.create("acme")
    return ref.id, secret


@pytest.fixture
def api(client, account) -> ApiClient:
    return ApiClient(client, account[1])


@pytest.fixture
def other_api(client, services) -> ApiClient:
    """A second account, for cross-account checks."""
    _, secret = services.accounts.create("rival")
    return ApiClient(client, secret)


@pytest.fixture
def backend(database_url) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent
    for item in items:
        parts = Path(item.fspath).relative_to(root).parts
        if parts and parts[0] in ("e2e", "faults"):
            item.add_marker(pytest.mark.e2e)
