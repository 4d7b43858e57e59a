"""Request parsing shared by both APIs."""

from __future__ import annotations

import typing

import marshmallow as ma
from flask_smorest import Blueprint as SmorestBlueprint
from webargs import core
from webargs.flaskparser import FlaskParser

#: Where a client may put its secret in the body; never part of a schema.
AUTH_FIELDS = frozenset({"api_secret", "api_key"})


class Parser(FlaskParser):
    """Reads a JSON body whatever its Content-Type (curl -d sends form-urlencoded by default,
    and the v3 clients send a JSON body even with GET), and drops the secret from it."""

    def _raw_load_json(self, req) -> typing.Any:
        data = req.get_data(cache=True)
        if not data or not data.strip():
            return core.missing
        return core.parse_json(data)

    def pre_load(self, location_data, *, schema: ma.Schema, req, location: str):
        if location == "json" and isinstance(location_data, dict):
            return {k: v for k, v in location_data.items() if k not in AUTH_FIELDS}
        return location_data


class Blueprint(SmorestBlueprint):
    ARGUMENTS_PARSER = Parser()


def json_body() -> typing.Any:
    """The request's JSON body, or None when there is none or it does not parse."""
    from flask import request

    data = request.get_data(cache=True)
    if not data or not data.strip():
        return None
    try:
        return core.parse_json(data)
    except (ValueError, UnicodeDecodeError):
        return None
