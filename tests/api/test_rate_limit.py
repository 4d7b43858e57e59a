"""Per-account write limits: 429 with Retry-After in the API's shape; reads and other accounts
are not affected."""

from __future__ import annotations

import pytest


@pytest.fixture
def app_config(app_config):
    return {**app_config, "RATE_LIMIT_WRITES": "5/minute"}


def test_writes_over_the_limit_get_429_and_take_nothing(api, other_api):
    deal = api.create_deal(quantity=100)  # 1 write
    statuses = [api.reserve(deal["id"], 1).status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]
    limited = api.reserve(deal["id"], 1)
    assert limited.status_code == 429
    body = limited.get_json()
    assert body["status"] == "error" and body["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    assert api.deal(deal["id"])["reserved"] == 4  # reads are not limited
    other = other_api.create_deal(quantity=1)
    assert other_api.reserve(other["id"], 1).status_code == 200
