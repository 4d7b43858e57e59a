"""Steps the services take after their SQL commit: the write has happened, so none of them may
fail it. A failure is logged and left: a missed Redis step is repaired by the reconciler or the
sweep, and a dropped event costs a count on /metrics, never a delivery (app/core/events.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from app.core import events as ev

log = logging.getLogger(__name__)


def best_effort(step: Callable[..., object], *args: object) -> bool:
    """Run `step(*args)`; False (logged) when it failed."""
    try:
        step(*args)
        return True
    except Exception:
        log.exception("best-effort step failed; the reconciler will repair it")
        return False


def emit(sink: ev.Events, *events: ev.Event) -> None:
    """Tell the event sink, if there is anything to tell."""
    if not events:
        return
    try:
        sink.emit(*events)
    except Exception:
        log.exception("event sink failed; events dropped", extra={"events": [e.type for e in events]})
