"""Delivery signatures: Standard Webhooks, and the old header for one more release.

Standard Webhooks (https://www.standardwebhooks.com), what receivers verify with the
`standardwebhooks` library of their language:

    webhook-id: dlv_...            the delivery id, the same on every retry (deduplicate on it)
    webhook-timestamp: 1765000000  unix seconds of this attempt
    webhook-signature: v1,<base64 of HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>

The key is what the webhook's secret stands for. A secret made now is `whsec_` followed by the
standard base64 of 32 random bytes, and the key is those bytes, as the specification says:
`Webhook(secret).verify(body, headers)` just works. Webhooks registered before Standard
Webhooks have a *legacy* secret: `whsec_` followed by 32 URL-safe characters (24 random bytes in
URL-safe base64, not the specification's alphabet), whose key was always the secret's own
UTF-8 bytes; deliveries to them are signed with that key, so a receiver verifies with
`Webhook(secret.encode())` (the library takes bytes as the key itself). The two kinds are told
apart by length: a standard secret decodes to 32 bytes, a legacy one to at most 24.

The old header, `X-OfferEngine-Signature: t=<unix seconds>,v1=<hex>` (HMAC-SHA256 keyed with
the secret's UTF-8 bytes over `<t>.` and the body), is still sent beside them, for every
webhook, until `LEGACY_HEADER_REMOVED_IN`; docs/integration.md says how to move.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
#: Random bytes behind a new secret (the specification asks for 24 to 64).
SECRET_BYTES = 32

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"

SIGNATURE_HEADER = "X-OfferEngine-Signature"
EVENT_HEADER = "X-OfferEngine-Event"
DELIVERY_HEADER = "X-OfferEngine-Delivery"
ATTEMPT_HEADER = "X-OfferEngine-Attempt"
#: The release that stops sending SIGNATURE_HEADER (this one, 0.1.x, still sends it).
LEGACY_HEADER_REMOVED_IN = "0.2.0"

#: How old a signature a receiver should accept by default (the specification's 5 minutes).
TOLERANCE_SECONDS = 300


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and the base64 of SECRET_BYTES random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _standard_key(secret: str) -> bytes | None:
    if not secret.startswith(SECRET_PREFIX):
        return None
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) >= SECRET_BYTES else None


def is_legacy(secret: str) -> bool:
    """True for a secret made before Standard Webhooks (its key is its own bytes)."""
    return _standard_key(secret) is None


def signing_key(secret: str) -> bytes:
    """The HMAC key of the Standard Webhooks signature for a webhook with `secret`."""
    key = _standard_key(secret)
    return secret.encode() if key is None else key


def standard_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64>`: HMAC-SHA256 over `{message_id}.{timestamp}.{body}`."""
    mac = hmac.new(signing_key(secret), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(secret: str, message_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Every signature header of one delivery attempt: the Standard Webhooks three and the old one."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        ID_HEADER: message_id,
        TIMESTAMP_HEADER: str(timestamp),
        STANDARD_SIGNATURE_HEADER: standard_signature(secret, message_id, timestamp, body),
        SIGNATURE_HEADER: signature_header(secret, body, timestamp),
    }


def verify_standard(
    secret: str,
    received: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """What a receiver's `standardwebhooks` library checks, for receivers without it: the three
    headers present, the timestamp within `tolerance` seconds, one `v1,` signature matching."""
    lowered = {name.lower(): value for name, value in received.items()}
    message_id = lowered.get(ID_HEADER)
    stamp = lowered.get(TIMESTAMP_HEADER)
    signatures = lowered.get(STANDARD_SIGNATURE_HEADER)
    if not (message_id and stamp and signatures):
        return False
    try:
        timestamp = int(stamp)
    except ValueError:
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        return False
    expected = standard_signature(secret, message_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures.split(" "))


# -- the old header (sent until LEGACY_HEADER_REMOVED_IN) ------------------------------------------


def signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={signature(secret, body, timestamp)}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance: int = TOLERANCE_SECONDS, now: float | None = None
) -> bool:
    """True when the old `header` signs `body` with `secret` and is no older than `tolerance`
    seconds."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp)
    return any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", []))
