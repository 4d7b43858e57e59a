"""DATABASE_REPLICA_URL: the dashboard and the CSV export read there; every write, and every
read a request decides on, stays on DATABASE_URL.

The "replica" here is a second SQLite database that nothing replicates into, so what the
dashboard shows tells which database it read."""

from __future__ import annotations

from app import create_app
from app.store.models import utcnow
from app.store.schema import upgrade_schema
from tests.conftest import empty_stores
from tests.support.api import ApiClient


def test_dashboard_and_export_read_the_replica_and_writes_go_to_the_primary(tmp_path, redis_url):
    primary, replica = (f"sqlite:///{tmp_path / name}.sqlite3" for name in ("primary", "replica"))
    upgrade_schema(primary)
    upgrade_schema(replica)
    config = {"TESTING": True, "DATABASE_URL": primary, "REDIS_URL": redis_url, "RQ_REDIS_URL": redis_url}
    app = create_app({**config, "SECRET_KEY": "test", "DATABASE_REPLICA_URL": replica})
    services = app.extensions["offer_engine"]
    try:
        empty_stores(services)
        assert services.reports_db is not services.db
        ref, secret = services.accounts.create("acme")
        api = ApiClient(app.test_client(), secret)
        deal = api.create_deal(quantity=5)
        assert api.buy(deal["id"], 2).status_code == 200  # the write path reads and writes the primary
        assert services.reports.overview(ref.id, utcnow())["deals"] == []  # the replica has nothing yet
        exported = app.test_cli_runner().invoke(args=["purchases", "export"])
        assert exported.exit_code == 0, exported.output
        assert "exported 0 purchases" in exported.output  # (the primary has one)
    finally:
        services.close()
