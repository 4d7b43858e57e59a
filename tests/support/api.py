"""A small helper over Flask's test client for multi-step API actions."""

from __future__ import annotations

import json as _json
from typing import Any


class ApiClient:
    def __init__(self, client, secret: str) -> None:
        self.client = client
        self.secret = secret

    def headers(self, extra: dict | None = None) -> dict:
        headers = {"Authorization": f"Bearer {self.secret}"}
        headers.update(extra or {})
        return headers

    def request(self, method: str, path: str, json: Any = None, headers: dict | None = None, **kwargs):
        if json is not None:
            # The stdlib encoder: tests send numbers larger than the app's own encoder allows.
            kwargs["data"] = _json.dumps(json)
            kwargs.setdefault("content_type", "application/json")
        return self.client.open(path, method=method, headers=self.headers(headers), **kwargs)

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs):
        return self.request("POST", path, json=json, **kwargs)

    def put(self, path: str, json: Any = None, **kwargs):
        return self.request("PUT", path, json=json, **kwargs)

    def patch(self, path: str, json: Any = None, **kwargs):
        return self.request("PATCH", path, json=json, **kwargs)

    # -- steps ------------------------------------------------------------------------------

    def create_deal(self, **fields) -> dict:
        body = {"title": "Lamp", "price_per_unit": 1999, "quantity": 10}
        body.update(fields)
        response = self.post("/v1/deals", body)
        assert response.status_code == 201, response.get_json()
        return response.get_json()["deal"]

    def deal(self, deal_id: int) -> dict:
        response = self.get(f"/v1/deals/{deal_id}")
        assert response.status_code == 200, response.get_json()
        return response.get_json()["deal"]

    def reserve(self, deal_id, num_bought: int = 1, **kwargs):
        return self.post("/v1/purchases/reserve", {"deal_id": deal_id, "num_bought": num_bought}, **kwargs)

    def reserved(self, deal_id, num_bought: int = 1) -> dict:
        response = self.reserve(deal_id, num_bought)
        assert response.status_code == 200, response.get_json()
        return response.get_json()["purchase"]

    def claim(self, purchase_id: str, user_id: str = "user-1", headers: dict | None = None, **fields):
        return self.put(f"/v1/purchases/{purchase_id}/claim", {"user_id": user_id, **fields}, headers=headers)

    def release(self, purchase_id: str, **kwargs):
        return self.put(f"/v1/purchases/{purchase_id}/release", **kwargs)

    def extend(self, purchase_id: str, json: Any = None):
        return self.put(f"/v1/purchases/{purchase_id}/extend", json)

    def buy(
        self,
        deal_id,
        quantity: int = 1,
        user_id: str = "user-1",
        price: int = 1999,
        headers: dict | None = None,
        **fields,
    ):
        body = {
            "deal_id": deal_id,
            "quantity": quantity,
            "user_id": user_id,
            "credit_card_id": "card-1",
            "expected_price_per_unit": price,
        }
        body.update(fields)
        return self.post("/v1/purchases", body, headers=headers)

    def purchase(self, purchase_id: str) -> dict:
        response = self.get(f"/v1/purchases/{purchase_id}")
        assert response.status_code == 200, response.get_json()
        return response.get_json()["purchase"]
