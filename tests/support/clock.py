"""A clock the tests move by hand: services built with `CLOCK=` read "now" from it."""

from __future__ import annotations

from datetime import datetime

from app.core.timeutil import from_ms, to_ms
from app.store.models import utcnow


class ControlledClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.ms = to_ms(start or utcnow())

    def __call__(self) -> datetime:
        return from_ms(self.ms)

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)
