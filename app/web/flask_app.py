"""The Flask application class: Flask, minus two per-request costs this service does not need,
with JSON through orjson.

Measured in-process on a sold-out reserve (bench/README.md, "in-process cost"): Flask opened the
signed cookie session on every request (a new itsdangerous signer each time) and asked `inspect`
thirteen times per request whether a hook or view was a coroutine function. Together they were
about an eighth of the answer's CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import Any

import orjson
from flask import Flask
from flask.json.provider import JSONProvider
from flask.sessions import SecureCookieSessionInterface

from app.core.jsonutil import dumps

#: The only pages that have a session (the dashboard's sign-in cookie).
SESSION_PATH_PREFIX = "/dashboard"


class DashboardSessions(SecureCookieSessionInterface):
    """The signed cookie session exists under /dashboard only. Elsewhere Flask gets no session
    (its null session): the API authenticates every request by its secret and never reads the
    dashboard's cookie, nor sets one."""

    def open_session(self, app, request):
        if not request.path.startswith(SESSION_PATH_PREFIX):
            return None
        return super().open_session(app, request)


class OrjsonProvider(JSONProvider):
    """Flask's JSON through orjson: the response body is a measurable part of the hot path."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return dumps(obj)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


class App(Flask):
    session_interface = DashboardSessions()
    json_provider_class = OrjsonProvider

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._is_coroutine: dict[Any, bool] = {}

    def ensure_sync(self, func: Callable) -> Callable:
        """Flask's, with the answer remembered per function (bound methods by their function:
        a view class's methods are bound anew for each request)."""
        key = getattr(func, "__func__", func)
        is_coroutine = self._is_coroutine.get(key)
        if is_coroutine is None:
            is_coroutine = self._is_coroutine[key] = iscoroutinefunction(func)
        return self.async_to_sync(func) if is_coroutine else func
