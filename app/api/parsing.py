"""Request parsing shared by both APIs: the body is checked and parsed once, before anything
else looks at it (authentication may read the secret from it)."""

from __future__ import annotations

import json
import typing

import marshmallow as ma
from flask import g, request
from flask_smorest import Blueprint as SmorestBlueprint
from webargs import core
from webargs.flaskparser import FlaskParser

#: Where a client may put its secret in the body; never part of a schema.
AUTH_FIELDS = frozenset({"api_secret", "api_key"})

_NO_BODY = object()


def read_body() -> None:
    """before_request of every API blueprint. A body must say it is JSON (415 otherwise) and
    be JSON (400 otherwise); the v3 clients send one even with GET, so this holds for every
    method. The parsed body is kept for the request."""
    from app.errors import ApiError, is_v3

    data = request.get_data(cache=True)  # 413 past MAX_CONTENT_LENGTH
    if not data or not data.strip():
        g.json_body = _NO_BODY
        return
    if not core.is_json(request.mimetype):
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON, with Content-Type: application/json.")
    try:
        g.json_body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        stop = "" if is_v3() else "."  # ConvertKit's messages end without one
        raise ApiError(400, "invalid_json", "The request body is not valid JSON" + stop) from None


def json_body() -> typing.Any:
    """The parsed JSON body, or None when there is none."""
    body = g.get("json_body", _NO_BODY)
    return None if body is _NO_BODY else body


class Parser(FlaskParser):
    """Hands the body parsed by `read_body` to the schemas, without the secret."""

    def _raw_load_json(self, req) -> typing.Any:
        body = g.get("json_body", _NO_BODY)
        return core.missing if body is _NO_BODY else body

    def pre_load(self, location_data, *, schema: ma.Schema, req, location: str):
        if location == "json" and isinstance(location_data, dict):
            return {k: v for k, v in location_data.items() if k not in AUTH_FIELDS}
        return location_data


class Blueprint(SmorestBlueprint):
    ARGUMENTS_PARSER = Parser()

    def arguments(self, schema, *args, **kwargs):
        # One schema object per view, not one per request: building a marshmallow schema
        # deep-copies its fields, which cost a fifth of a sold-out answer. Loading is stateless.
        if isinstance(schema, type):
            schema = schema()
        return super().arguments(schema, *args, **kwargs)

    def alt_response(self, *args, **kwargs):
        """Document an error response without wrapping the view: flask-smorest's version adds
        a call layer (with a coroutine check) per documented status to every request."""
        document = super().alt_response(*args, **kwargs)

        def decorator(func):
            func._apidoc = document(func)._apidoc
            return func

        return decorator
