"""/v1/public: a public deal as a storefront sees it, without a secret, and its live stream
(Server-Sent Events), through the Flask test client. The stream's events come from the process's
feed (app/inventory/storefront.py), whose poller here is a real thread on the test's Redis."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.api.test_metrics import scrape, value

#: The storefront fields, and nothing else.
FIELDS = {
    "id",
    "title",
    "price",
    "currency",
    "quantity",
    "available",
    "sold_out",
    "starts_at",
    "ends_at",
    "on_sale",
}
INTERVAL = 0.1
HEARTBEAT = 0.3


@pytest.fixture
def app_config(app_config):
    return {
        **app_config,
        "STREAM_HEARTBEAT_SECONDS": HEARTBEAT,
        "STREAM_INTERVAL_SECONDS": INTERVAL,
        "STREAM_REFRESH_SECONDS": 0.2,
        "STREAM_THREAD_LIMIT": 3,
    }


@pytest.fixture
def public_deal(api) -> dict:
    return api.create_deal(title="Drop lamp", price_per_unit=2500, quantity=10, currency="eur", public=True)


class Stream:
    """A stream answer read chunk by chunk (each chunk the server writes is whole events or one
    comment). Reading blocks at most a heartbeat: the server writes one when nothing happened."""

    def __init__(self, response) -> None:
        self.response = response
        self.chunks = iter(response.response)

    def chunk(self) -> bytes:
        return next(self.chunks)

    def event(self, deadline: float = 5.0) -> tuple[str, dict]:
        """The next `stock` event (heartbeats skipped), as (event name, data)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            fields = parse(self.chunk())
            if "data" in fields:
                return fields.get("event", "message"), json.loads(fields["data"])
        raise AssertionError(f"no event within {deadline} s")

    def event_where(self, condition, deadline: float = 5.0) -> dict:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            _, data = self.event(deadline)
            if condition(data["deal"]):
                return data
        raise AssertionError(f"no such event within {deadline} s")

    def close(self) -> None:
        self.response.close()


def parse(chunk: bytes) -> dict[str, str]:
    """The fields of the chunk's events (the last value of each), comments under ":"."""
    fields: dict[str, str] = {}
    for line in chunk.decode().split("\n"):
        if line.startswith(":"):
            fields[":"] = line[1:].strip()
        elif line:
            name, _, rest = line.partition(":")
            fields[name] = rest[1:] if rest.startswith(" ") else rest
    return fields


def open_stream(client, deal_id: int) -> Stream:
    response = client.get(f"/v1/public/deals/{deal_id}/stream")
    assert response.status_code == 200, response.get_json()
    return Stream(response)


# -- GET /v1/public/deals/:id ----------------------------------------------------------------


def test_a_public_deal_shows_only_the_storefront_fields_without_a_secret(client, api, public_deal):
    api.reserved(public_deal["id"], 3)
    response = client.get(f"/v1/public/deals/{public_deal['id']}")  # no Authorization at all
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "success" and set(body) == {"status", "deal"}
    deal = body["deal"]
    assert set(deal) == FIELDS
    assert deal == {
        "id": public_deal["id"],
        "title": "Drop lamp",
        "price": 2500,
        "currency": "EUR",
        "quantity": 10,
        "available": 7,
        "sold_out": False,
        "starts_at": None,
        "ends_at": None,
        "on_sale": True,
    }
    # A secret, right or wrong, changes nothing: it is neither needed nor checked.
    for headers in ({"Authorization": f"Bearer {api.secret}"}, {"Authorization": "Bearer oe_wrong"}):
        assert client.get(f"/v1/public/deals/{public_deal['id']}", headers=headers).get_json() == body


def test_sold_out_and_the_sale_window(client, api):
    starts = datetime.now(UTC) + timedelta(hours=1)
    later = api.create_deal(quantity=2, public=True, starts_at=starts.isoformat(), ends_at=None)
    shown = client.get(f"/v1/public/deals/{later['id']}").get_json()["deal"]
    assert shown["on_sale"] is False and shown["starts_at"] == later["starts_at"] and shown["ends_at"] is None
    now = api.create_deal(quantity=2, public=True, ends_at=(starts + timedelta(hours=1)).isoformat())
    assert api.buy(now["id"], 2).status_code == 200
    shown = client.get(f"/v1/public/deals/{now['id']}").get_json()["deal"]
    assert (shown["available"], shown["sold_out"], shown["on_sale"]) == (0, True, True)
    assert shown["ends_at"] == now["ends_at"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/public/deals/{private}",
        "/v1/public/deals/{unknown}",
        "/v1/public/deals/abc",
        "/v1/public/deals/0",
        "/v1/public/deals/-1",
        "/v1/public/deals/99999999999999999999",
        "/v1/public/deals/1.5",
        "/v1/public/deals/{private}/stream",
        "/v1/public/deals/{unknown}/stream",
        "/v1/public/deals/abc/stream",
        "/v1/public/deals/0/stream",
    ],
)
def test_a_deal_that_is_not_public_is_not_found(client, api, path):
    private = api.create_deal(quantity=5)  # public defaults to false
    response = client.get(path.format(private=private["id"], unknown=private["id"] + 1000))
    assert response.status_code == 404
    body = response.get_json()
    assert body["status"] == "error" and body["error"] == "not_found" and body["message"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"  # the page can read why


def test_a_deal_made_private_is_gone_and_back_when_public_again(client, api, public_deal):
    path = f"/v1/public/deals/{public_deal['id']}"
    assert api.patch(f"/v1/deals/{public_deal['id']}", {"public": False}).status_code == 200
    assert client.get(path).status_code == 404
    assert api.patch(f"/v1/deals/{public_deal['id']}", {"public": True}).status_code == 200
    assert client.get(path).status_code == 200


def test_cors_for_any_origin_and_the_preflight(client, public_deal):
    origin = {"Origin": "https://shop.example"}
    for path in (f"/v1/public/deals/{public_deal['id']}", f"/v1/public/deals/{public_deal['id']}/waitlist"):
        preflight = client.options(
            path,
            headers={
                **origin,
                "Access-Control-Request-Method": "POST" if path.endswith("waitlist") else "GET",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200, path
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert {"GET", "POST"} <= {m.strip() for m in preflight.headers["Access-Control-Allow-Methods"].split(",")}
        assert "content-type" in preflight.headers["Access-Control-Allow-Headers"].lower()
    response = client.get(f"/v1/public/deals/{public_deal['id']}", headers=origin)
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]
    stream = client.get(f"/v1/public/deals/{public_deal['id']}/stream", headers=origin)
    try:
        assert stream.headers["Access-Control-Allow-Origin"] == "*"
    finally:
        stream.close()
    # The account's own API stays without CORS: its secret never belongs in a browser.
    assert "Access-Control-Allow-Origin" not in client.get("/v1/deals", headers=origin).headers


def test_public_requests_do_not_count_against_the_accounts_write_limit(app_config, database_url, redis_url):
    from app import create_app
    from tests.conftest import empty_stores
    from tests.support.api import ApiClient

    app = create_app({**app_config, "RATE_LIMIT_WRITES": "3/minute"})
    try:
        empty_stores(app.extensions["offer_engine"])
        _, secret = app.extensions["offer_engine"].accounts.create("limited")
        api = ApiClient(app.test_client(), secret)
        deal = api.create_deal(public=True)  # 1 write of 3
        for _ in range(5):  # a storefront's writes, even carrying the account's secret
            joined = api.post(f"/v1/public/deals/{deal['id']}/waitlist", {"user_id": "someone"})
            # They have a budget of their own (tests/api/test_public_waitlist.py): 3 here.
            assert joined.status_code in (200, 201, 429)
            assert api.get(f"/v1/public/deals/{deal['id']}").status_code == 200
        assert [api.reserve(deal["id"]).status_code for _ in range(3)] == [200, 200, 429]
    finally:
        app.extensions["offer_engine"].close()


def test_the_public_api_is_documented_without_security(client):
    doc = client.get("/openapi.json").get_json()
    item = doc["paths"]["/v1/public/deals/{deal_id}"]["get"]
    assert item["security"] == [] and "401" not in item["responses"]
    schema = item["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    envelope = doc["components"]["schemas"][schema]
    deal = doc["components"]["schemas"][envelope["properties"]["deal"]["$ref"].rsplit("/", 1)[-1]]
    assert set(deal["properties"]) == FIELDS
    stream = doc["paths"]["/v1/public/deals/{deal_id}/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]


# -- GET /v1/public/deals/:id/stream ---------------------------------------------------------------


def test_the_stream_starts_with_retry_and_the_deal_then_follows_a_reserve(client, api, public_deal):
    response = client.get(f"/v1/public/deals/{public_deal['id']}/stream")
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-store"
    stream = Stream(response)
    try:
        first = parse(stream.chunk())
        assert int(first["retry"]) >= 1000  # EventSource reconnects by itself after this many ms
        assert first["event"] == "stock"
        assert json.loads(first["data"]) == client.get(f"/v1/public/deals/{public_deal['id']}").get_json()
        api.reserved(public_deal["id"], 4)
        name, data = stream.event()
        assert name == "stock" and set(data["deal"]) == FIELDS
        assert (data["deal"]["available"], data["deal"]["sold_out"]) == (6, False)
        assert api.buy(public_deal["id"], 6, price=2500).status_code == 200
        assert stream.event_where(lambda deal: deal["sold_out"])["deal"]["available"] == 0
    finally:
        stream.close()


def test_changes_are_coalesced_to_one_event_per_interval(client, api, public_deal):
    deal = api.create_deal(quantity=1000, public=True)
    stream = open_stream(client, deal["id"])
    try:
        stream.event()
        for _ in range(5):
            api.reserved(deal["id"], 1)
        stream.event_where(lambda shown: shown["available"] == 995)

        # Changes every few ms: the events keep at least the interval between them.
        reserving = threading.Event()
        reserves = []

        def reserve_for_a_while():
            reserving.set()
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                reserves.append(api.reserve(deal["id"], 1).status_code)
                time.sleep(0.005)

        worker = threading.Thread(target=reserve_for_a_while)
        worker.start()
        reserving.wait()
        # Read chunk by chunk (a heartbeat at least every HEARTBEAT) until the reserves are over
        # and the last of them is shown: waiting for an event while the reserving thread may
        # already have made its last change could wait for one that never comes.
        seen: list[tuple[float, int]] = []
        final = None
        deadline = time.monotonic() + 30
        while final is None or not seen or seen[-1][1] != final:
            assert time.monotonic() < deadline, (final, seen[-3:])
            fields = parse(stream.chunk())
            if "data" in fields:
                seen.append((time.monotonic(), json.loads(fields["data"])["deal"]["available"]))
            if final is None and not worker.is_alive():
                final = 995 - reserves.count(200)
        worker.join()
        gaps = [later[0] - earlier[0] for earlier, later in zip(seen, seen[1:], strict=False)]
        assert all(gap >= INTERVAL * 0.95 for gap in gaps), gaps
        assert len(seen) < reserves.count(200), (len(seen), reserves.count(200))
        assert [available for _, available in seen] == sorted((a for _, a in seen), reverse=True)
    finally:
        stream.close()


def test_a_heartbeat_comment_when_nothing_changes(client, public_deal):
    stream = open_stream(client, public_deal["id"])
    try:
        stream.chunk()
        started = time.monotonic()
        beat = stream.chunk()
        assert beat == b": keep-alive\n\n"
        assert HEARTBEAT * 0.9 <= time.monotonic() - started < HEARTBEAT + 2
    finally:
        stream.close()


def test_a_patch_shows_up_on_the_stream(client, api, public_deal):
    stream = open_stream(client, public_deal["id"])
    try:
        stream.event()
        assert (
            api.patch(f"/v1/deals/{public_deal['id']}", {"title": "Drop lamp II", "price_per_unit": 2000}).status_code
            == 200
        )
        data = stream.event_where(lambda deal: deal["title"] == "Drop lamp II")
        assert data["deal"]["price"] == 2000
        assert api.patch(f"/v1/deals/{public_deal['id']}", {"quantity": 15}).status_code == 200
        assert stream.event_where(lambda deal: deal["quantity"] == 15)["deal"]["available"] == 15
    finally:
        stream.close()


def test_the_stream_ends_when_the_deal_stops_being_public(client, api, public_deal):
    stream = open_stream(client, public_deal["id"])
    stream.chunk()
    assert api.patch(f"/v1/deals/{public_deal['id']}", {"public": False}).status_code == 200
    deadline = time.monotonic() + 5
    with pytest.raises(StopIteration):
        while time.monotonic() < deadline:
            stream.chunk()
    stream.close()
    assert client.get(f"/v1/public/deals/{public_deal['id']}/stream").status_code == 404


def test_streams_end_when_the_feed_closes(client, services, public_deal):
    """What the gunicorn worker does when it shuts down (config/gunicorn.py)."""
    from app.web.api.public.stream import end_streams

    stream = open_stream(client, public_deal["id"])
    stream.chunk()
    end_streams(client.application)
    with pytest.raises(StopIteration):
        stream.chunk()
    stream.close()
    refused = client.get(f"/v1/public/deals/{public_deal['id']}/stream")
    assert refused.status_code == 503 and refused.get_json()["error"] == "unavailable"


def test_a_closed_stream_leaves_the_feed_and_the_metrics_count_it(client, services, public_deal):
    before = scrape(client)
    streams = [open_stream(client, public_deal["id"]) for _ in range(2)]
    for stream in streams:
        stream.event()
    during = scrape(client)
    assert value(during, "offer_engine_streams_open") - value(before, "offer_engine_streams_open") == 2
    assert services.storefront.feed.listening() == 2
    sent = value(during, "offer_engine_stream_events_sent_total") - value(
        before, "offer_engine_stream_events_sent_total"
    )
    assert sent == 2
    for stream in streams:
        stream.close()
    after = scrape(client)
    assert value(after, "offer_engine_streams_open") == value(before, "offer_engine_streams_open")
    assert services.storefront.feed.listening() == 0
    # Closed before it was ever read: still taken off the feed.
    unread = client.get(f"/v1/public/deals/{public_deal['id']}/stream")
    unread.close()
    assert services.storefront.feed.listening() == 0


def test_a_threaded_process_holds_a_few_streams_and_refuses_more(client, public_deal):
    """Outside gevent each stream holds a thread: STREAM_THREAD_LIMIT (3 here) at a time."""
    streams = [open_stream(client, public_deal["id"]) for _ in range(3)]
    try:
        refused = client.get(f"/v1/public/deals/{public_deal['id']}/stream")
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert refused.get_json()["error"] == "unavailable"
    finally:
        for stream in streams:
            stream.close()
    open_stream(client, public_deal["id"]).close()
