"""GET /v1/events: the account's relayed events, oldest first, 50 a page, after an event id; the
same objects the webhooks get."""

from __future__ import annotations

import json

from app.core import events as ev
from tests.api.test_webhooks import app_config, queue, register, relay, rq_connection, work  # noqa: F401  (fixtures)
from tests.support.receiver import Receiver


def listed(api, query: str = "") -> dict:
    response = api.get(f"/v1/events{query}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_events_page_oldest_first_after_an_event_id(api, other_api, relay):  # noqa: F811
    deal = api.create_deal(quantity=57)
    held = api.reserved(deal["id"], 2)
    assert api.claim(held["id"], "user-7").status_code == 200
    assert listed(api) == {"status": "success", "events": [], "has_more": False}  # not relayed yet
    relay()
    shown = listed(api)
    assert [e["type"] for e in shown["events"]] == [ev.PURCHASE_RESERVED, ev.PURCHASE_FULFILLED]
    assert [e["id"] for e in shown["events"]] == ["evt_1", "evt_2"] and not shown["has_more"]
    reserved, fulfilled = shown["events"]
    assert reserved["data"]["purchase"]["id"] == held["id"]
    assert fulfilled["data"]["purchase"]["user_id"] == "user-7" and fulfilled["data"]["via"] == "claim"
    assert reserved["created_at"].endswith("Z")
    assert listed(api, "?after=evt_1")["events"] == [fulfilled]
    assert listed(api, "?after=evt_2")["events"] == []
    assert listed(other_api)["events"] == []  # another account's

    for _ in range(55):
        api.reserved(deal["id"], 1)
    relay()
    first = listed(api, "?after=evt_2")
    assert len(first["events"]) == 50 and first["has_more"]
    rest = listed(api, "?after=" + first["events"][-1]["id"])
    assert len(rest["events"]) == 6 and not rest["has_more"]  # 5 holds, then the sell-out
    assert rest["events"][-1] == {
        "id": "evt_58",
        "type": ev.DEAL_SOLD_OUT,
        "created_at": rest["events"][-1]["created_at"],
        "data": {"deal": {"id": deal["id"], "available": 0}},
    }


def test_a_listed_event_is_what_the_webhook_got(api, work):  # noqa: F811
    deal = api.create_deal(quantity=5)
    with Receiver() as receiver:
        register(api, receiver.url, [ev.PURCHASE_RESERVED])
        api.reserved(deal["id"], 1)
        work()
    [delivered] = receiver.received
    [event] = listed(api)["events"]
    assert json.loads(delivered.body) == event
    assert delivered.headers["webhook-id"].startswith(f"dlv_{event['id'][4:]}_")


def test_a_bad_cursor_is_a_422(api):
    for bad in ("1", "evt_", "evt_x", "evt_1234567890123456789", "dlv_1_1"):
        response = api.get(f"/v1/events?after={bad}")
        assert response.status_code == 422, bad
        assert "after" in response.get_json()["errors"]


def test_events_are_documented(client):
    spec = client.get("/openapi.json").get_json()
    operation = spec["paths"]["/v1/events"]["get"]
    assert [p["name"] for p in operation["parameters"] if p["in"] == "query"] == ["after"]
    assert set(operation["responses"]) >= {"200", "401", "422"}
