"""Standard Webhooks: real deliveries, run by the worker class against a receiver on 127.0.0.1,
verified with the `standardwebhooks` package a receiver would use; the old header still sent
beside them; webhooks registered before (legacy secrets) keep working."""

from __future__ import annotations

import base64
import json
import secrets

import pytest
from sqlalchemy import update
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.core import events as ev
from app.store.models import Webhook as WebhookRow
from app.webhooks import signing
from tests.api.test_webhooks import app_config, queue, register, relay, rq_connection, work  # noqa: F401  (fixtures)
from tests.support.receiver import Receiver
from tests.support.servers import wait_for


def verified(secret: str | bytes, received) -> dict:
    """What a receiver does: the library checks the headers against the raw body."""
    return Webhook(secret).verify(received.body, received.headers)


def test_real_deliveries_verify_with_the_standardwebhooks_library(api, work):  # noqa: F811
    deal = api.create_deal(quantity=5)
    with Receiver(statuses=[500]) as receiver:
        hook = register(api, receiver.url, [ev.PURCHASE_FULFILLED])
        assert not signing.is_legacy(hook["secret"])
        held = api.reserved(deal["id"], 2)
        assert api.claim(held["id"], "user-7").status_code == 200

        def delivered():
            work()
            return [r.answered for r in receiver.received] == [500, 200]

        wait_for(delivered, 30, "the first attempt (500) and its retry (200)", interval=0.25)

    first, second = receiver.received
    for attempt in (first, second):
        payload = verified(hook["secret"], attempt)
        assert payload["type"] == ev.PURCHASE_FULFILLED
        assert payload["data"]["purchase"]["id"] == held["id"]
        assert attempt.headers["webhook-id"] == attempt.headers[signing.DELIVERY_HEADER]
        # The old header, beside the new ones, for this release.
        assert signing.verify(hook["secret"], attempt.headers[signing.SIGNATURE_HEADER], attempt.body)
        with pytest.raises(WebhookVerificationError):
            Webhook(hook["secret"]).verify(attempt.body + b" ", attempt.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(signing.new_secret()).verify(attempt.body, attempt.headers)
        without_id = {k: v for k, v in attempt.headers.items() if k.lower() != "webhook-id"}
        with pytest.raises(WebhookVerificationError):
            Webhook(hook["secret"]).verify(attempt.body, without_id)
    # A retry is the same message: the receiver deduplicates on webhook-id.
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body


def test_a_webhook_with_a_legacy_secret_keeps_working(api, services, work):  # noqa: F811
    """Registered before Standard Webhooks: its receiver's check of the old header goes on
    passing, and the new headers verify with the secret's own bytes as the key."""
    deal = api.create_deal(quantity=5)
    legacy = "whsec_" + secrets.token_urlsafe(24)
    with Receiver() as receiver:
        hook = register(api, receiver.url, [ev.PURCHASE_FULFILLED, ev.PURCHASE_RELEASED])
        with services.db.transaction() as session:
            session.execute(update(WebhookRow).where(WebhookRow.id == hook["id"]).values(secret=legacy))
        assert api.buy(deal["id"], 1).status_code == 200
        work()
        assert len(receiver.received) == 1

    received = receiver.received[0]
    assert signing.verify(legacy, received.headers[signing.SIGNATURE_HEADER], received.body)
    assert verified(legacy.encode(), received)["type"] == ev.PURCHASE_FULFILLED
    # The same key, given to the library as a whsec_ secret of its own alphabet:
    assert verified("whsec_" + base64.b64encode(legacy.encode()).decode(), received)
    assert signing.verify_standard(legacy, received.headers, received.body)
    assert json.loads(received.body)["data"]["purchase"]["deal_id"] == deal["id"]
