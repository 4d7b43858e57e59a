"""JSON through orjson: the response body is a measurable part of the hot path."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from flask.json.provider import JSONProvider


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> str:
    # Non-string keys: marshmallow keys the errors of a list's items by index ({"events": {0: [...]}}).
    return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()


class OrjsonProvider(JSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return dumps(obj)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)
