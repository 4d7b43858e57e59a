"""GET /dashboard: sign-in, one account's live data, sign-out, and the queue page behind it."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest

from app.store.models import utcnow
from tests.support.calls import Calls


@pytest.fixture(autouse=True)
def fresh_account_cache(services):
    services.accounts.forget_cached()
    yield
    services.accounts.forget_cached()


def csrf_of(response) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', response.get_data(as_text=True)).group(1)


def sign_in(client, secret):
    response = client.get(f"/dashboard?api_secret={secret}")
    assert response.status_code == 303
    return response


def test_the_page_asks_for_a_secret(client):
    response = client.get("/dashboard")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'name="api_secret"' in html and 'type="password"' in html
    assert client.get("/dashboard/data.json").status_code == 401


def test_sign_in_once_from_the_url_then_a_clean_url(client, account):
    response = sign_in(client, account[1])
    assert response.headers["Location"] == "/dashboard"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert account[1] not in cookie
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert "acme" in page.get_data(as_text=True)


def test_a_wrong_secret_is_refused(client, account):
    response = client.get("/dashboard?api_secret=oe_wrong")
    assert response.status_code == 401
    assert "not valid" in response.get_data(as_text=True)
    assert client.get("/dashboard/data.json").status_code == 401


def test_sign_in_through_the_form_and_out(client, account):
    form = client.get("/dashboard")
    assert client.post("/dashboard/sign-in", data={"api_secret": account[1]}).status_code == 400  # no CSRF token
    response = client.post("/dashboard/sign-in", data={"api_secret": account[1], "csrf": csrf_of(form)})
    assert response.status_code == 303
    page = client.get("/dashboard")
    assert page.status_code == 200 and 'id="deals"' in page.get_data(as_text=True)
    assert client.post("/dashboard/sign-out", data={}).status_code == 400
    assert client.post("/dashboard/sign-out", data={"csrf": csrf_of(page)}).status_code == 303
    assert client.get("/dashboard/data.json").status_code == 401
    assert 'name="api_secret"' in client.get("/dashboard").get_data(as_text=True)


def test_the_data_is_the_accounts_own_and_live(client, api, other_api, services, account):
    deal = api.create_deal(title="Lamp <b>bold</b>", quantity=5)
    gone = api.create_deal(title="Gone", quantity=1)
    api.buy(gone["id"], 1)
    held = api.reserved(deal["id"], 2)
    claimed = api.claim(api.reserved(deal["id"], 1)["id"]).get_json()["purchase"]
    ended = services.purchases.reserve(account[0], deal["id"], 1, now=utcnow() - timedelta(seconds=400))
    rival = other_api.create_deal(title="Rival", quantity=3)
    other_api.reserved(rival["id"], 1)

    sign_in(client, account[1])
    data = client.get("/dashboard/data.json").get_json()
    deals = {d["id"]: d for d in data["deals"]}
    assert set(deals) == {deal["id"], gone["id"]}
    assert {k: deals[deal["id"]][k] for k in ("quantity", "available", "reserved", "sold", "sold_out")} == {
        "quantity": 5,
        "available": 2,
        "reserved": 2,
        "sold": 1,
        "sold_out": False,
    }
    assert deals[gone["id"]]["sold_out"] is True
    assert [h["purchase_id"] for h in data["holds"]] == [held["id"]]
    hold = data["holds"][0]
    assert hold["units"] == 2 and hold["deal_title"] == "Lamp <b>bold</b>"
    assert 200_000 < hold["ends_at_ms"] - data["now_ms"] <= 300_000
    states = {p["id"]: p["fulfillment_state"] for p in data["purchases"]}
    assert states[held["id"]] == "reserved"
    assert states[claimed["id"]] == "fulfilled"
    assert states[ended.token] == "expired"
    assert len(states) == 4  # the direct purchase too; nothing of the rival's

    html = client.get("/dashboard").get_data(as_text=True)
    assert "Lamp &lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold</b>" not in html.split('id="initial-data"')[0]
    assert "sold out" in html
    assert f'data-purchase-id="{held["id"]}"' in html
    assert "Rival" not in html


def test_every_asset_is_served_by_the_app(client, account):
    sign_in(client, account[1])
    html = client.get("/dashboard").get_data(as_text=True)
    sources = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
    assert len(sources) == 2
    for source in sources:
        assert source.startswith("/static/")
        with client.get(source) as asset:
            assert asset.status_code == 200
    assert "http://" not in html and "https://" not in html


def test_rotating_the_secret_ends_the_session(client, services, account):
    sign_in(client, account[1])
    assert client.get("/dashboard/data.json").status_code == 200
    services.accounts.rotate_secret(account[0])
    services.accounts.forget_cached()  # (this process forgets at once; others within STORED_CACHE_SECONDS)
    assert client.get("/dashboard/data.json").status_code == 401


def test_the_queue_page_is_behind_the_sign_in_and_read_only(client, account):
    response = client.get("/dashboard/rq/")
    assert response.status_code == 303 and response.headers["Location"] == "/dashboard"
    assert client.get("/dashboard/rq/0/data/queues.json").status_code == 401
    sign_in(client, account[1])
    assert client.get("/dashboard/rq/").status_code == 200
    queues = client.get("/dashboard/rq/0/data/queues.json")
    assert queues.status_code == 200 and "queues" in queues.get_json()
    assert client.get("/dashboard/rq/0/data/workers.json").status_code == 200
    assert client.post("/dashboard/rq/job/some-job/delete").status_code == 405
    assert client.post("/dashboard/rq/job/some-job/requeue").status_code == 405
    assert client.get("/dashboard/rq/requeue/offer-engine").status_code == 405
    assert client.post("/dashboard/rq/queue/offer-engine/queued/empty").status_code == 405


def test_what_one_dashboard_poll_costs(client, api, services, account, monkeypatch):
    """Bounded work per poll, whatever the account's size: counted, and timed for the README."""
    deals = [api.create_deal(title=f"Deal {i}", quantity=100) for i in range(20)]
    for deal in deals[:10]:
        for _ in range(3):
            api.reserved(deal["id"], 1)
    for deal in deals[10:]:
        api.buy(deal["id"], 2)
    sign_in(client, account[1])
    client.get("/dashboard/data.json")  # warm: caches, connections
    calls = Calls(services, monkeypatch)
    try:
        data = client.get("/dashboard/data.json").get_json()
        queries = calls.queries()
        _, redis_round_trips = calls.reset()
        rounds = 50
        started = time.perf_counter()
        for _ in range(rounds):
            client.get("/dashboard/data.json")
        per_poll_ms = (time.perf_counter() - started) * 1000 / rounds
    finally:
        calls.close()
    assert len(data["deals"]) == 20 and len(data["holds"]) == 30 and len(data["purchases"]) == 25
    assert len(queries) <= 3, queries  # the deals, the purchases, the carts (the account check is cached)
    assert redis_round_trips <= 4  # snapshots; holds; their units; the waitlists of deals holding units
    print(
        f"\ndashboard poll (20 deals, 30 holds, 25 purchases): {len(queries)} SQL queries, "
        f"{redis_round_trips} Redis round trips, {per_poll_ms:.1f} ms each through the test client"
    )


def test_the_dashboard_shows_sale_windows_and_carts(client, api, other_api, account):
    upcoming = api.create_deal(title="Soon", quantity=3, starts_at="2099-01-01T00:00:00Z")
    ended = api.create_deal(title="Over", quantity=3, starts_at="2020-01-01T00:00:00Z", ends_at="2020-02-01T00:00:00Z")
    on_sale = api.create_deal(title="Now", quantity=3)
    cart = api.post(
        "/v1/carts/reserve", {"items": [{"deal_id": on_sale["id"], "num_bought": 2}], "user_id": "ann"}
    ).get_json()["cart"]
    rival = other_api.create_deal(quantity=3)
    other_api.post("/v1/carts/reserve", {"items": [{"deal_id": rival["id"], "num_bought": 1}]})

    sign_in(client, account[1])
    data = client.get("/dashboard/data.json").get_json()
    windows = {d["id"]: d["window"] for d in data["deals"]}
    assert windows == {upcoming["id"]: "upcoming", ended["id"]: "ended", on_sale["id"]: "on_sale"}
    assert [(c["id"], c["state"], c["items"], c["units"], c["user_id"]) for c in data["carts"]] == [
        (cart["id"], "reserved", 1, 2, "ann")
    ]
    html = client.get("/dashboard").get_data(as_text=True)
    assert f'data-cart-id="{cart["id"]}"' in html and "upcoming" in html


def test_each_deals_waitlist_waiting_and_offered(client, api, other_api, services, account, monkeypatch):
    """Customers waiting and offers held, per deal, from the live state; asked only for the deals
    that can have a waitlist (sold out, or holding units)."""
    full = api.create_deal(title="Full", quantity=2)
    held = [api.reserved(full["id"], 1)["id"] for _ in range(2)]
    for user in ("ann", "bob", "cy"):
        assert api.post(f"/v1/deals/{full['id']}/waitlist", {"user_id": user}).status_code == 201
    api.release(held[0])  # ann's offer
    plenty = api.create_deal(title="Plenty", quantity=5)
    rival = other_api.create_deal(title="Rival", quantity=1)
    other_api.reserved(rival["id"], 1)
    other_api.post(f"/v1/deals/{rival['id']}/waitlist", {"user_id": "eve"})

    sign_in(client, account[1])
    client.get("/dashboard/data.json")  # warm: the account check is cached
    calls = Calls(services, monkeypatch)
    try:
        data = client.get("/dashboard/data.json").get_json()
        queries = calls.queries()
    finally:
        calls.close()
    waitlists = {d["id"]: (d["waitlist_waiting"], d["waitlist_offered"]) for d in data["deals"]}
    assert waitlists == {full["id"]: (2, 1), plenty["id"]: (0, 0)}
    assert len(queries) <= 3 and not any("waitlist" in q for q in queries), queries  # none in SQL
    html = client.get("/dashboard").get_data(as_text=True)
    row = html[html.index(f'data-deal-id="{full["id"]}"') :]
    assert '<td class="num waiting">2</td>' in row and '<td class="num offered">1</td>' in row

    # Claimed and left: nothing waits, nothing is offered.
    ann = api.get(f"/v1/deals/{full['id']}/waitlist").get_json()["entries"][0]
    assert api.claim(ann["purchase_id"], "ann").status_code == 200
    for entry in api.get(f"/v1/deals/{full['id']}/waitlist").get_json()["entries"]:
        if entry["state"] == "waiting":
            api.request("DELETE", f"/v1/waitlist/{entry['id']}")
    data = client.get("/dashboard/data.json").get_json()
    assert {d["id"]: (d["waitlist_waiting"], d["waitlist_offered"]) for d in data["deals"]}[full["id"]] == (0, 0)
