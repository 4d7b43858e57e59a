"""The delivery signature: `X-OfferEngine-Signature: t=<unix seconds>,v1=<hex>`.

`v1` is HMAC-SHA256, keyed with the webhook's secret, over `<t>.` followed by the exact bytes
of the request body. Putting the timestamp under the MAC lets a receiver refuse old replays;
it compares in constant time and accepts a small clock skew (`verify`).
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-OfferEngine-Signature"
EVENT_HEADER = "X-OfferEngine-Event"
DELIVERY_HEADER = "X-OfferEngine-Delivery"
ATTEMPT_HEADER = "X-OfferEngine-Attempt"

#: How old a signature a receiver should accept by default.
TOLERANCE_SECONDS = 300


def signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={signature(secret, body, timestamp)}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance: int = TOLERANCE_SECONDS, now: float | None = None
) -> bool:
    """True when `header` signs `body` with `secret` and is no older than `tolerance` seconds."""
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
