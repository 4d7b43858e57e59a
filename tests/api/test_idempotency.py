"""Idempotency-Key: a retry gets the first response and has no second effect."""

from __future__ import annotations

from sqlalchemy import func, select

from app.inventory import keys as K
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


def test_a_retry_while_the_first_still_runs_gets_409(api, services, account):
    deal = api.create_deal(quantity=5)
    services.redis.set(K.idempotency_lock(account[0], "k-3"), "someone", px=30_000)
    response = api.reserve(deal["id"], 1, headers={"Idempotency-Key": "k-3"})
    assert response.status_code == 409
    assert response.get_json()["error"] == "request_in_progress"
    assert response.headers["Retry-After"] == "1"
    assert api.deal(deal["id"])["reserved"] == 0


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


def test_a_failed_request_is_not_recorded(api, services):
    deal = api.create_deal(quantity=1)
    api.buy(deal["id"], 1)
    assert api.reserve(deal["id"], 1, headers={"Idempotency-Key": "late"}).status_code == 409
    assert count(services, IdempotencyRecord) == 0
    api.patch(f"/v1/deals/{deal['id']}", {"quantity": 2})
    assert api.reserve(deal["id"], 1, headers={"Idempotency-Key": "late"}).status_code == 200


def test_a_bad_key_is_400(api):
    deal = api.create_deal()
    response = api.reserve(deal["id"], 1, headers={"Idempotency-Key": "x" * 300})
    assert response.status_code == 400
