"""Instants as Redis sees them (integer ms since the epoch) and as SQL stores them (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def to_ms(instant: datetime) -> int:
    """Exact (no float rounding), so an instant survives SQL -> Redis -> SQL unchanged."""
    return (instant - EPOCH) // MS


def from_ms(ms: int) -> datetime:
    return EPOCH + ms * MS


def now_ms() -> int:
    return to_ms(datetime.now(UTC))


def iso(instant: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, to the millisecond: how the v1 API shows instants."""
    if instant is None:
        return None
    return instant.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
