"""Idempotency-Key: a retry gets the first response and has no second effect."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.core.idempotency import derived_token
from app.core.timeutil import now_ms
from app.inventory.stock import Order
from app.store.models import IdempotencyRecord, Purchase


def count(services, model) -> int:
    with services.db.read() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_reserve_retried_with_the_same_key_holds_once(api, services):
    deal = api.create_deal(quantity=5)
    first = api.reserve(deal["id"], 2, headers={"Idempotency-Key": "k-1"})
    second = api.reserve(deal["id"], 2, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 200
    assert second.get_json() == first.get_json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert count(services, Purchase) == 1
    assert api.deal(deal["id"])["reserved"] == 2


def test_the_same_key_with_a_different_body_is_refused(api, services):
    deal = api.create_deal(quantity=5)
    api.reserve(deal["id"], 1, headers={"Idempotency-Key": "k-2"})
    response = api.reserve(deal["id"], 3, headers={"Idempotency-Key": "k-2"})
    assert response.status_code == 422
    assert response.get_json()["error"] == "idempotency_key_reused"
    assert api.deal(deal["id"])["reserved"] == 1


def first_request_took(services, account, deal, key, seconds_ago):
    """A reserve with `key` whose script ran `seconds_ago` and has not committed (it still runs,
    or its process died)."""
    started = now_ms() - seconds_ago * 1000
    token = derived_token(account[0], key)
    services.stock.reserve(Order(deal["id"], account[0], token, "first-attempt", 1), started, started + 300_000)


def test_a_retry_while_the_first_still_runs_gets_409(api, services, account):
    deal = api.create_deal(quantity=5)
    first_request_took(services, account, deal, "k-3", seconds_ago=0)
    response = api.reserve(deal["id"], 1, headers={"Idempotency-Key": "k-3"})
    assert response.status_code == 409
    assert response.get_json()["error"] == "request_in_progress"
    assert response.headers["Retry-After"] == "1"
    assert api.deal(deal["id"])["reserved"] == 1
    assert count(services, Purchase) == 0


def test_a_retry_after_the_first_died_succeeds_within_seconds_with_its_hold(api, services, account):
    deal = api.create_deal(quantity=5)
    first_request_took(services, account, deal, "k-4", seconds_ago=3)
    response = api.reserve(deal["id"], 1, headers={"Idempotency-Key": "k-4"})
    assert response.status_code == 200
    assert response.get_json()["purchase"]["id"] == derived_token(account[0], "k-4")
    shown = api.deal(deal["id"])
    assert (shown["available"], shown["reserved"]) == (4, 1)  # the dead request's hold, adopted
    assert count(services, Purchase) == 1
    assert services.rebuilder.check(deal["id"]) == []


def test_keys_belong_to_one_account(api, other_api):
    deal = api.create_deal(quantity=5)
    other_deal = other_api.create_deal(quantity=5)
    assert api.reserve(deal["id"], 1, headers={"Idempotency-Key": "shared"}).status_code == 200
    assert other_api.reserve(other_deal["id"], 1, headers={"Idempotency-Key": "shared"}).status_code == 200
    assert other_api.deal(other_deal["id"])["reserved"] == 1


def test_claim_release_and_create_are_idempotent_with_a_key(api, services):
    deal = api.create_deal(quantity=10)
    held = api.reserved(deal["id"], 2)
    claims = [api.claim(held["id"], "alice", headers={"Idempotency-Key": "c"}) for _ in range(2)]
    assert claims[0].get_json() == claims[1].get_json()
    other = api.reserved(deal["id"], 1)
    releases = [api.release(other["id"], headers={"Idempotency-Key": "r"}) for _ in range(2)]
    assert releases[0].get_json() == releases[1].get_json()
    buys = [api.buy(deal["id"], 3, headers={"Idempotency-Key": "b"}) for _ in range(2)]
    assert buys[0].get_json() == buys[1].get_json()
    shown = api.deal(deal["id"])
    assert (shown["available"], shown["reserved"], shown["sold"]) == (5, 0, 5)
    assert count(services, IdempotencyRecord) == 3


def test_a_failed_request_is_not_recorded(api, services, clock):
    deal = api.create_deal(quantity=1)
    api.buy(deal["id"], 1)
    assert api.reserve(deal["id"], 1, headers={"Idempotency-Key": "late"}).status_code == 409
    assert count(services, IdempotencyRecord) == 0
    api.patch(f"/v1/deals/{deal['id']}", {"quantity": 2})
    # A request with the key that began by the refusal's instant is refused too (it may be one
    # that ran on while the refused retry was answered); one that begins later is decided afresh.
    assert api.reserve(deal["id"], 1, headers={"Idempotency-Key": "late"}).status_code == 409
    clock.advance(0.001)
    assert api.reserve(deal["id"], 1, headers={"Idempotency-Key": "late"}).status_code == 200


def test_a_bad_key_is_400(api):
    deal = api.create_deal()
    response = api.reserve(deal["id"], 1, headers={"Idempotency-Key": "x" * 300})
    assert response.status_code == 400


@pytest.fixture
def app_config(app_config):
    return {**app_config, "IDEMPOTENCY_TTL_SECONDS": 60}


@pytest.mark.parametrize("same_body", [True, False])
def test_a_key_used_again_after_its_retention_period_is_a_new_request(api, services, clock, same_body):
    deal = api.create_deal(quantity=5)
    first = api.reserve(deal["id"], 1, headers={"Idempotency-Key": "old"})
    assert first.status_code == 200
    clock.advance(61)
    again = api.reserve(deal["id"], 1 if same_body else 2, headers={"Idempotency-Key": "old"})
    assert again.status_code == 200, again.get_json()
    assert "Idempotent-Replayed" not in again.headers
    assert again.get_json()["purchase"]["id"] != first.get_json()["purchase"]["id"]
    assert count(services, Purchase) == 2
    assert count(services, IdempotencyRecord) == 1  # the old answer replaced in place
    retried = api.reserve(deal["id"], 1 if same_body else 2, headers={"Idempotency-Key": "old"})
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.get_data() == again.get_data()
    assert count(services, Purchase) == 2


class TestWithTheSoldOutMemo:
    """A process that has just seen a deal sold out answers its next buyers from memory; a
    keyed retry must still learn that its own first request holds the unit."""

    @pytest.fixture
    def app_config(self, app_config):
        return {**app_config, "SOLD_OUT_CACHE_MS": 600_000}

    def test_a_retry_of_the_request_that_took_the_last_unit_is_in_progress_not_sold_out(self, api, services, account):
        deal = api.create_deal(quantity=1)
        first_request_took(services, account, deal, "k-last", seconds_ago=0)  # the memo: sold out
        assert api.reserve(deal["id"], 1).get_json()["error"] == "sold_out"
        response = api.reserve(deal["id"], 1, headers={"Idempotency-Key": "k-last"})
        assert response.status_code == 409
        assert response.get_json()["error"] == "request_in_progress"

    def test_a_retry_after_the_first_died_gets_its_unit_though_the_deal_is_sold_out(self, api, services, account):
        deal = api.create_deal(quantity=1)
        first_request_took(services, account, deal, "k-died", seconds_ago=3)
        assert api.reserve(deal["id"], 1).get_json()["error"] == "sold_out"
        response = api.reserve(deal["id"], 1, headers={"Idempotency-Key": "k-died"})
        assert response.status_code == 200
        assert api.deal(deal["id"])["reserved"] == 1
