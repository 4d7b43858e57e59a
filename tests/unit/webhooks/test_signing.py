"""Standard Webhooks secrets and signatures."""

from __future__ import annotations

import base64
import secrets

from standardwebhooks.webhooks import Webhook

from app.observability.logs import redact
from app.webhooks import signing
from tests.api.test_webhooks import app_config, queue, register, rq_connection, work  # noqa: F401  (fixtures)


def test_new_secrets_are_standard_whsec_base64():
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 44
    assert len(base64.b64decode(secret[6:], validate=True)) == 32
    assert not signing.is_legacy(secret)
    assert signing.signing_key(secret) == base64.b64decode(secret[6:])
    assert signing.new_secret() != secret


def test_a_secret_from_before_standard_webhooks_is_legacy():
    for _ in range(50):  # some of them happen to be valid standard base64 too: length decides
        legacy = "whsec_" + secrets.token_urlsafe(24)
        assert signing.is_legacy(legacy)
        assert signing.signing_key(legacy) == legacy.encode()


def test_the_signature_matches_the_librarys_own():
    secret = signing.new_secret()
    body = b'{"id": "evt_1", "type": "purchase.fulfilled"}'
    headers = signing.headers(secret, "dlv_1", body, timestamp=1_765_000_000)
    from datetime import UTC, datetime

    expected = Webhook(secret).sign("dlv_1", datetime.fromtimestamp(1_765_000_000, UTC), body)
    assert headers["webhook-signature"] == expected
    assert headers["webhook-id"] == "dlv_1" and headers["webhook-timestamp"] == "1765000000"
    assert signing.verify_standard(secret, headers, body, now=1_765_000_000 + 10)
    assert not signing.verify_standard(secret, headers, body, now=1_765_000_000 + 301)  # too old
    assert not signing.verify_standard(secret, headers, body + b" ", now=1_765_000_000)
    assert not signing.verify_standard(signing.new_secret(), headers, body, now=1_765_000_000)


def test_log_lines_never_show_a_new_secret():
    secret = "whsec_" + base64.b64encode(bytes(range(224, 256))).decode()
    assert "+" in secret and "/" in secret  # standard base64, beyond the URL-safe alphabet
    assert secret[6:] not in redact(f"registered with {secret} for you")
    assert "whsec_[redacted]" in redact(f"secret={secret}")
