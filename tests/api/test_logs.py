"""Structured logs: a request id on every request and log line, and no secret in any log line."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from app.observability.logs import JsonFormatter, request_id


@pytest.fixture
def json_lines():
    """Log lines of this test, formatted as in production (one JSON object per line)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("web"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_a_request_id_is_generated_returned_and_logged(api, json_lines):
    response = api.get("/v1/deals")
    rid = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    access = [line for line in json_lines() if line["logger"] == "app.access"]
    assert access[-1]["request_id"] == rid
    assert access[-1] | {"ms": 0} == {
        "ts": access[-1]["ts"],
        "level": "info",
        "logger": "app.access",
        "msg": "request",
        "role": "web",
        "request_id": rid,
        "method": "GET",
        "path": "/v1/deals",
        "endpoint": "/v1/deals",
        "status": 200,
        "ms": 0,
    }
    assert request_id.get() is None  # not left behind for the next request on this thread


def test_a_sane_request_id_from_the_caller_is_kept(api):
    assert api.get("/v1/deals", headers={"X-Request-ID": "lb-7f3a.42"}).headers["X-Request-ID"] == "lb-7f3a.42"


def test_errors_carry_the_request_id_too(client):
    response = client.get("/v1/deals", headers={"X-Request-ID": "abc"})
    assert response.status_code == 401
    assert response.headers["X-Request-ID"] == "abc"
    assert client.get("/nowhere").headers["X-Request-ID"]


def test_secrets_never_reach_the_logs(client, account, json_lines):
    secret = account[1]
    client.get(f"/v1/deals?api_secret={secret}")
    client.get("/v1/deals", headers={"Authorization": f"Bearer {secret}"})
    client.post("/v1/deals", json={"api_secret": secret, "title": ""})
    client.get(f"/dashboard?api_secret={secret}")
    logging.getLogger("app.test").warning(
        f"something mentioned Bearer {secret} and api_secret={secret}",
        extra={"api_secret": secret, "authorization": f"Bearer {secret}", "note": f"key {secret}"},
    )
    lines = json_lines()
    assert len(lines) >= 5
    text = json.dumps(lines)
    assert secret not in text
    assert secret[3:] not in text
    assert all("?" not in line.get("path", "") for line in lines)


def test_the_access_log_can_be_turned_off(app_config, json_lines):
    from app import create_app

    quiet = create_app({**app_config, "ACCESS_LOG": False})
    try:
        quiet.test_client().get("/healthz")
    finally:
        quiet.extensions["offer_engine"].close()
    assert not [line for line in json_lines() if line["logger"] == "app.access"]
