"""`flask --app app purchases export`: CSV of the purchase records, in batches, with a progress bar."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

from app.store.models import utcnow
from app.web.cli import EXPORT_COLUMNS


def test_export_writes_every_purchase_as_csv(app, api, other_api, services, account):
    deal = api.create_deal(quantity=20)
    fulfilled = api.claim(api.reserved(deal["id"], 2)["id"], "user-1").get_json()["purchase"]
    released = api.reserved(deal["id"], 1)
    api.release(released["id"])
    held = api.reserved(deal["id"], 1)
    ended = services.purchases.reserve(account[0], deal["id"], 1, now=utcnow() - timedelta(seconds=400))
    direct = api.buy(deal["id"], 3, price=1999).get_json()["purchase"]
    other_deal = other_api.create_deal(quantity=5)
    other_api.buy(other_deal["id"], 1)

    result = app.test_cli_runner().invoke(args=["purchases", "export", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == list(EXPORT_COLUMNS)
    assert len(rows) == 6
    by_id = {row["id"]: row for row in rows}
    assert by_id[fulfilled["id"]]["fulfillment_state"] == "fulfilled"
    assert by_id[fulfilled["id"]]["total"] == "39.9800"
    assert by_id[fulfilled["id"]]["user_id"] == "user-1"
    assert by_id[released["id"]]["fulfillment_state"] == "released"
    assert by_id[held["id"]]["fulfillment_state"] == "reserved"
    assert by_id[ended.token]["fulfillment_state"] == "expired"  # its hold ended, swept or not
    assert by_id[direct["id"]]["units"] == "3"
    assert [row["id"] for row in rows][:2] == [fulfilled["id"], released["id"]]  # oldest first
    assert "exporting" in result.stderr and "exported 6 purchases" in result.stderr

    mine = app.test_cli_runner().invoke(args=["purchases", "export", "--account", str(account[0]), "--source", "v1"])
    assert len(list(csv.DictReader(io.StringIO(mine.stdout)))) == 5


def test_export_to_a_file(app, api, tmp_path):
    deal = api.create_deal(quantity=2)
    api.buy(deal["id"], 1)
    target = tmp_path / "purchases.csv"
    result = app.test_cli_runner().invoke(args=["purchases", "export", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert len(target.read_text().splitlines()) == 2
