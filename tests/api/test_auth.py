"""Secrets: where they may be presented, and what a wrong or foreign one gets."""

from __future__ import annotations

import pytest

ROUTES = [
    ("GET", "/v1/deals"),
    ("POST", "/v1/deals"),
    ("GET", "/v1/deals/{deal}"),
    ("PATCH", "/v1/deals/{deal}"),
    ("POST", "/v1/purchases/reserve"),
    ("POST", "/v1/purchases"),
    ("GET", "/v1/purchases"),
    ("GET", "/v1/purchases/{purchase}"),
    ("PUT", "/v1/purchases/{purchase}/claim"),
    ("PUT", "/v1/purchases/{purchase}/release"),
    ("PUT", "/v1/purchases/{purchase}/extend"),
]


@pytest.fixture
def made(api):
    deal = api.create_deal(quantity=10)
    purchase = api.reserved(deal["id"])
    return {"deal": deal["id"], "purchase": purchase["id"]}


@pytest.mark.parametrize("method, path", ROUTES)
def test_missing_or_wrong_secret_is_401(client, made, method, path):
    url = path.format(**made)
    for headers in ({}, {"Authorization": "Bearer oe_wrong"}, {"Authorization": "Basic abc"}):
        response = client.open(url, method=method, json={}, headers=headers)
        assert response.status_code == 401, (url, headers)
        assert response.get_json() == {
            "status": "error",
            "error": "unauthorized",
            "message": "A valid API secret is required.",
        }


def test_secret_in_header_query_or_body(client, api, made):
    secret = api.secret
    assert client.get(f"/v1/deals/{made['deal']}", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert client.get(f"/v1/deals/{made['deal']}?api_secret={secret}").status_code == 200
    response = client.post(
        "/v1/purchases/reserve", json={"api_secret": secret, "deal_id": made["deal"], "num_bought": 1}
    )
    assert response.status_code == 200


@pytest.mark.parametrize("method, path", [r for r in ROUTES if "{" in r[1]])
def test_another_accounts_deal_or_purchase_is_404(other_api, made, method, path):
    body = {"user_id": "u"} if path.endswith("claim") else ({"title": "x"} if method == "PATCH" else None)
    response = other_api.request(method, path.format(**made), json=body)
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_another_accounts_deal_cannot_be_bought(api, other_api, services, made):
    assert other_api.reserve(made["deal"], 1).status_code == 404
    assert other_api.buy(made["deal"], 1).status_code == 404
    assert api.deal(made["deal"])["available"] == 9
    assert other_api.get("/v1/purchases").get_json()["purchases"] == []
    assert other_api.get("/v1/deals").get_json()["deals"] == []


def test_secrets_never_reach_the_logs(client, api, services, made, caplog, monkeypatch):
    import logging

    caplog.set_level(logging.DEBUG)
    secret = api.secret
    client.get(f"/v1/deals/{made['deal']}?api_secret={secret}")
    client.post("/v1/purchases/reserve", json={"api_secret": secret, "deal_id": made["deal"], "num_bought": 1})
    client.get("/v1/deals/1", headers={"Authorization": f"Bearer {secret}x"})

    def boom(*args, **kwargs):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(services.purchases, "claim", boom)
    response = client.put(f"/v1/purchases/{made['purchase']}/claim?api_secret={secret}", json={"user_id": "u"})
    assert response.status_code == 500
    assert response.get_json()["error"] == "internal_error"
    assert caplog.records, "nothing was logged, so this test would prove nothing"
    for record in caplog.records:
        text = record.getMessage() + str(record.__dict__) + (caplog.text or "")
        assert secret not in text
