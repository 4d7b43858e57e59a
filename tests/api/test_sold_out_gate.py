"""The sold-out gate (app/web/sold_out_gate.py) answers a flash sale's refusals before Flask: the
same answer Flask gives, byte for byte, and only when Flask would give it."""

from __future__ import annotations

import json

import pytest
from werkzeug.test import Client

from app.web.api.parsing import FORM
from app.web.sold_out_gate import SoldOutGate
from tests.api.test_idempotency import first_request_took
from tests.api.test_metrics import scrape, value


@pytest.fixture
def app_config(app_config):
    # A memo that outlives the test: the gate answers only what the memo knows.
    return {**app_config, "SOLD_OUT_CACHE_MS": 600_000}


class Counted:
    """Flask's WSGI app, counting the requests the gate handed it."""

    def __init__(self, wsgi_app) -> None:
        self.wsgi_app = wsgi_app
        self.calls = 0

    def __call__(self, environ, start_response):
        self.calls += 1
        return self.wsgi_app(environ, start_response)


@pytest.fixture
def gate(app) -> SoldOutGate:
    gate = app.wsgi_app.wsgi_app
    assert isinstance(gate, SoldOutGate)
    gate.wsgi_app = Counted(gate.wsgi_app)
    return gate


@pytest.fixture
def sold_out(api) -> dict:
    deal = api.create_deal(quantity=1)
    api.reserved(deal["id"], 1)
    assert api.reserve(deal["id"], 1).status_code == 409  # the script said so: remembered
    return deal


def through(wsgi_app, headers: dict, body, *, content_type="application/json", query=""):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = Client(wsgi_app).post(
        "/v1/purchases/reserve", data=data, headers=headers, content_type=content_type, query_string=query
    )
    return response.status, sorted(response.headers.items()), response.get_data()


def test_a_sold_out_reserve_is_answered_by_the_gate_as_flask_answers_it(gate, api, sold_out):
    flask = gate.wsgi_app
    for units in (1, 3, 1000):
        body = {"deal_id": sold_out["id"], "num_bought": units}
        flask.calls = 0
        by_gate = through(gate, api.headers(), body)
        assert flask.calls == 0
        assert by_gate == through(flask, api.headers(), body)
        assert by_gate[0] == "409 CONFLICT"
        assert json.loads(by_gate[2]) == {
            "status": "error",
            "error": "sold_out",
            "message": f"Only 0 left, {units} requested.",
        }


def test_a_customers_sold_out_reserve_is_answered_by_the_gate_too(gate, api, sold_out):
    flask = gate.wsgi_app
    cases = [
        (api.headers(), {"deal_id": sold_out["id"], "num_bought": 2, "user_id": "ada"}),
        # The view's schema takes digits in a JSON string; so does the gate, which loads with it.
        (api.headers(), {"deal_id": str(sold_out["id"]), "num_bought": 1}),
    ]
    for headers, body in cases:
        flask.calls = 0
        by_gate = through(gate, headers, body)
        assert flask.calls == 0
        assert by_gate[0] == "409 CONFLICT" and json.loads(by_gate[2])["error"] == "sold_out"
        assert by_gate == through(flask, headers, body)


def test_a_keyed_reserve_is_answered_by_the_gate_as_flask_answers_it(gate, api):
    """A retry of a reserve that succeeded (its hold since released) gets its kept answer, a
    reused key 422 and a fresh key sold_out: from the gate, byte for byte what Flask answers."""
    deal = api.create_deal(quantity=1)
    body = {"deal_id": deal["id"], "num_bought": 1}
    first = through(gate, api.headers({"Idempotency-Key": "checkout-1"}), body)
    assert first[0] == "200 OK"
    assert api.release(json.loads(first[2])["purchase"]["id"]).status_code == 200
    api.reserved(deal["id"], 1)  # someone else takes the unit: remembered as sold out
    flask = gate.wsgi_app
    cases = {
        "a retry": (api.headers({"Idempotency-Key": "checkout-1"}), body),
        "a reused key": (api.headers({"Idempotency-Key": "checkout-1"}), {**body, "num_bought": 2}),
        "a fresh key": (api.headers({"Idempotency-Key": "checkout-2"}), body),
    }
    answers = {}
    for name, (headers, sent) in cases.items():
        flask.calls = 0
        answers[name] = through(gate, headers, sent)
        assert flask.calls == 0, name
        assert answers[name] == through(flask, headers, sent), name
    assert answers["a retry"][0] == "200 OK" and answers["a retry"][2] == first[2]
    assert ("Idempotent-Replayed", "true") in answers["a retry"][1]
    assert json.loads(answers["a reused key"][2])["error"] == "idempotency_key_reused"
    assert json.loads(answers["a fresh key"][2])["error"] == "sold_out"


@pytest.mark.parametrize(("seconds_ago", "answer"), [(0, "409 CONFLICT"), (3, "200 OK")])
def test_a_key_whose_first_attempt_holds_the_last_unit_goes_to_flask(gate, api, services, account, seconds_ago, answer):
    """The memo knows the deal sold out, but this key's first attempt holds the unit that sold it
    out, uncommitted: still running (request_in_progress) or dead (the retry adopts its hold).
    Only the script can say which, so the gate leaves the request to Flask."""
    deal = api.create_deal(quantity=1)
    first_request_took(services, account, deal, "k-last", seconds_ago=seconds_ago)
    assert api.reserve(deal["id"], 1).status_code == 409  # remembered as sold out
    gate.wsgi_app.calls = 0
    retry = through(gate, api.headers({"Idempotency-Key": "k-last"}), {"deal_id": deal["id"], "num_bought": 1})
    assert gate.wsgi_app.calls == 1
    assert retry[0] == answer
    if answer == "409 CONFLICT":
        assert json.loads(retry[2])["error"] == "request_in_progress"


def test_every_other_request_goes_to_flask_and_gets_flasks_answer(gate, api, other_api, sold_out):
    flask = gate.wsgi_app
    deal_id = sold_out["id"]
    ok = {"deal_id": deal_id, "num_bought": 1}
    cases = {
        "an ill-formed Idempotency-Key": (api.headers({"Idempotency-Key": "k" * 256}), ok, {}),
        "a form body": (api.headers(), f"deal_id={deal_id}&num_bought=1".encode(), {"content_type": FORM}),
        "a query string": (api.headers(), ok, {"query": "x=1"}),
        "the secret in the body": ({}, {**ok, "api_secret": api.secret}, {}),
        "an unknown field": (api.headers(), {**ok, "note": "hi"}, {}),
        "a missing field": (api.headers(), {"deal_id": deal_id}, {}),
        "units as a bool": (api.headers(), {**ok, "num_bought": True}, {}),
        "units as a float": (api.headers(), {**ok, "num_bought": 1.0}, {}),
        "zero units": (api.headers(), {**ok, "num_bought": 0}, {}),
        "too many units": (api.headers(), {**ok, "num_bought": 1001}, {}),
        "a deal id past 64 bits": (api.headers(), {**ok, "deal_id": 2**63}, {}),
        "a list body": (api.headers(), [ok], {}),
        "broken JSON": (api.headers(), b'{"deal_id": ', {}),
        "text, not JSON": (api.headers(), ok, {"content_type": "text/plain"}),
        "an unknown secret": ({"Authorization": "Bearer nope"}, ok, {}),
        "no secret": ({}, ok, {}),
        "another account's deal": (other_api.headers(), ok, {}),
        "a deal the memo does not know": (api.headers(), {**ok, "deal_id": deal_id + 1000}, {}),
    }
    for name, (headers, body, options) in cases.items():
        flask.calls = 0
        by_gate = through(gate, headers, body, **options)
        assert flask.calls == 1, name
        assert by_gate == through(flask, headers, body, **options), name


def test_the_gates_answers_are_counted_and_logged_as_reserves(client, gate, api, sold_out, caplog):
    before = scrape(client)
    caplog.set_level("INFO", logger="app.access")
    gate.wsgi_app.calls = 0
    for _ in range(3):
        assert api.reserve(sold_out["id"], 1).status_code == 409
    assert gate.wsgi_app.calls == 0
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    reserve = {"method": "POST", "endpoint": "/v1/purchases/reserve"}
    assert delta("offer_engine_http_requests_total", **reserve, status="409") == 3
    assert delta("offer_engine_http_request_duration_seconds_count", **reserve) == 3
    assert delta("offer_engine_sold_out_refusals_total", endpoint="/v1/purchases/reserve") == 3
    lines = [r for r in caplog.records if r.name == "app.access" and r.path == "/v1/purchases/reserve"]
    assert [(r.status, r.endpoint) for r in lines] == [(409, "/v1/purchases/reserve")] * 3


class TestWriteLimit:
    @pytest.fixture
    def app_config(self, app_config):
        return {**app_config, "RATE_LIMIT_WRITES": "5/minute"}

    def test_the_gates_answers_count_against_the_write_limit(self, gate, api):
        deal = api.create_deal(quantity=1)  # writes 1 and 2 of 5, through Flask; the
        api.reserved(deal["id"], 1)  # reserve leaves 0 units: remembered
        for _ in range(3):  # writes 3, 4 and 5: the gate
            assert api.reserve(deal["id"], 1).status_code == 409
        assert gate.wsgi_app.calls == 2
        over = api.reserve(deal["id"], 1)  # 6: over the limit; the gate leaves it to Flask
        assert gate.wsgi_app.calls == 3
        assert over.status_code == 429 and over.get_json()["error"] == "rate_limited"
        assert int(over.headers["Retry-After"]) >= 1


def test_without_the_memo_there_is_no_gate(app_config):
    from app import create_app

    app = create_app({**app_config, "SOLD_OUT_CACHE_MS": 0})
    try:
        assert not isinstance(app.wsgi_app.wsgi_app, SoldOutGate)
    finally:
        app.extensions["offer_engine"].close()


def test_flask_reads_the_body_the_gate_read(gate, api, sold_out):
    """A request the gate looked at and left (a deal the memo does not know) still reserves."""
    deal = api.create_deal(quantity=5)
    response = api.reserve(deal["id"], 2)
    assert gate.wsgi_app.calls >= 1
    assert response.status_code == 200 and response.get_json()["purchase"]["quantity"] == 2
