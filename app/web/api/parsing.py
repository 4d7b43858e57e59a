"""Request parsing shared by both APIs: the body is checked and parsed once, before anything
else looks at it (authentication may read the secret from it).

v1 bodies are JSON or, as the Rails service the seeds describe took them, a form
(`application/x-www-form-urlencoded`: flat fields, numbers as digits). A form is read into the
JSON object it stands for, by the same schemas: a field the schema wants as an integer takes
the form's digits as that integer (a JSON body must still send a JSON number), a list field
takes every value of its name (`events=a&events=b`, or `events[]=a`), any other field is given
once. v3 bodies are JSON only (ConvertKit's clients send JSON).
"""

from __future__ import annotations

import json
import re
import typing
from urllib.parse import parse_qsl

import marshmallow as ma
from flask import g, request
from webargs import core
from webargs.flaskparser import FlaskParser

from app.web.errors import ApiError, ErrorBody

#: Where a client may put its secret in the body; never part of a schema.
AUTH_FIELDS = frozenset({"api_secret", "api_key"})

FORM = "application/x-www-form-urlencoded"
#: More fields than any v1 body has, by far; a form with more is refused (400).
MAX_FORM_FIELDS = 1000
#: Digits a form may give for an integer field: as long as any bounded field's, and then some.
_FORM_INTEGER = re.compile(r"-?[0-9]{1,40}")

_NO_BODY = object()


def read_body(accepts_forms: bool, error_body: ErrorBody) -> None:
    """Read the request's body for an API (its blueprint's before_request, app/web/api/blueprint.py).
    A body must say it is JSON, or a form where the API `accepts_forms` (415 otherwise), and be
    one (400 otherwise); the v3 clients send one even with GET, so this holds for every method.
    The parsed body is kept for the request."""
    data = request.get_data(cache=True)  # 413 past MAX_CONTENT_LENGTH
    g.form_body = False
    if not data or not data.strip():
        g.json_body = _NO_BODY
        return
    mimetype = request.mimetype
    if mimetype == FORM and accepts_forms:
        g.json_body = _read_form(data)
        g.form_body = True
        return
    if not core.is_json(mimetype):
        if accepts_forms:
            message = f"Send the body as JSON (Content-Type: application/json) or as a form ({FORM})."
        else:
            message = "Send the body as JSON, with Content-Type: application/json."
        raise ApiError(415, "unsupported_media_type", message)
    try:
        g.json_body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "invalid_json", "The request body is not valid JSON" + error_body.stop) from None


def _read_form(data: bytes) -> dict[str, str | list[str]]:
    """A form's fields: a value per name, or the list of values of a name given more than once
    or written `name[]`."""
    if data.lstrip()[:1] in (b"{", b"["):
        # What `curl -d '{...}'` sends when not told the Content-Type.
        raise ApiError(
            415,
            "unsupported_media_type",
            f"The body is JSON but its Content-Type says a form ({FORM}, curl's default for -d): "
            "send it with Content-Type: application/json.",
        )
    try:
        pairs = parse_qsl(
            data.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=True,
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except ValueError as error:  # UnicodeDecodeError included
        problem = "is not UTF-8" if isinstance(error, UnicodeDecodeError) else "is not a valid form"
        raise ApiError(
            400,
            "invalid_form",
            f"The request body {problem} (name=value pairs joined by &, at most {MAX_FORM_FIELDS}).",
        ) from None
    fields: dict[str, str | list[str]] = {}
    for name, value in pairs:
        listed = name.endswith("[]")
        if listed:
            name = name[:-2]
        known = fields.get(name)
        if known is None:
            fields[name] = [value] if listed else value
        elif isinstance(known, list):
            known.append(value)
        else:
            fields[name] = [known, value]
    return fields


def form_values(form: dict[str, str | list[str]], schema: ma.Schema) -> dict[str, typing.Any]:
    """The JSON object a form stands for, as `schema` reads it: digits for an integer field
    become that integer, a list field gets every value of its name, and any other field given
    more than once is an error (422 naming it)."""
    values: dict[str, typing.Any] = {}
    repeated: dict[str, list[str]] = {}
    for name, given in form.items():
        field = schema.load_fields.get(name)
        if isinstance(field, ma.fields.List):
            values[name] = [_typed(field.inner, item) for item in (given if isinstance(given, list) else [given])]
        elif isinstance(given, list):
            repeated[name] = ["Give this field once."]
        else:
            values[name] = _typed(field, given)
    if repeated:
        raise ma.ValidationError(repeated)
    return values


def _typed(field: ma.fields.Field | None, value: str) -> typing.Any:
    if isinstance(field, ma.fields.Integer) and _FORM_INTEGER.fullmatch(value):
        return int(value)
    if isinstance(field, ma.fields.Boolean) and value in ("true", "false"):
        return value == "true"
    return value


def json_body() -> typing.Any:
    """The parsed body (a form's fields as `_read_form` gives them), or None when there is none."""
    body = g.get("json_body", _NO_BODY)
    return None if body is _NO_BODY else body


class Parser(FlaskParser):
    """Hands the body parsed by `read_body` to the schemas, without the secret."""

    def _raw_load_json(self, req) -> typing.Any:
        body = g.get("json_body", _NO_BODY)
        return core.missing if body is _NO_BODY else body

    def pre_load(self, location_data, *, schema: ma.Schema, req, location: str):
        if location == "json" and isinstance(location_data, dict):
            data = {k: v for k, v in location_data.items() if k not in AUTH_FIELDS}
            return form_values(data, schema) if g.get("form_body") else data
        return location_data
