"""A web process answers "sold out" from memory for a moment after it saw a deal sold out."""

from __future__ import annotations

import time

import pytest

from app.inventory.stock import LiveStock


@pytest.fixture
def app_config(app_config):
    return {**app_config, "SOLD_OUT_CACHE_MS": 300}


def test_a_sold_out_deal_is_answered_without_redis_for_a_moment(api, services, monkeypatch):
    # The memo's clock stands still: the moment lasts however slowly a busy machine runs the test.
    standing = time.monotonic()
    monkeypatch.setattr(services.stock.sold_out, "clock", lambda: standing)
    deal = api.create_deal(quantity=1)
    assert api.reserve(deal["id"], 1).status_code == 200  # leaves 0: remembered
    calls = []
    original = services.stock.scripts.__call__
    monkeypatch.setattr(
        type(services.stock.scripts), "__call__", lambda self, *a, **k: calls.append(a[0]) or original(*a, **k)
    )
    for _ in range(5):
        response = api.reserve(deal["id"], 1)
        assert response.status_code == 409 and response.get_json()["error"] == "sold_out"
    assert "reserve" not in calls


def test_the_memo_never_sells_and_ends(api, services, monkeypatch):
    now = [time.monotonic()]  # the memo's clock, moved by the test
    monkeypatch.setattr(services.stock.sold_out, "clock", lambda: now[0])
    deal = api.create_deal(quantity=1)
    held = api.reserved(deal["id"], 1)
    assert api.reserve(deal["id"], 1).status_code == 409
    # Units come back through another process: this one may still refuse for up to the
    # memo's 300 ms, then sells them.
    another_process = LiveStock(services.redis)
    assert another_process.release(deal["id"], held["id"]) == 1
    now[0] += 0.29
    assert api.reserve(deal["id"], 1).status_code == 409
    now[0] += 0.02
    assert api.reserve(deal["id"], 1).status_code == 200


def test_giving_units_back_in_this_process_forgets_at_once(api):
    deal = api.create_deal(quantity=1)
    held = api.reserved(deal["id"], 1)
    assert api.reserve(deal["id"], 1).status_code == 409
    assert api.release(held["id"]).status_code == 200
    assert api.reserve(deal["id"], 1).status_code == 200


def test_another_accounts_deal_is_still_not_found(api, other_api):
    deal = api.create_deal(quantity=1)
    api.reserved(deal["id"], 1)
    assert api.reserve(deal["id"], 1).status_code == 409
    assert other_api.reserve(deal["id"], 1).status_code == 404
