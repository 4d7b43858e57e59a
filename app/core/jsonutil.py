"""JSON out through orjson: answers, kept answers and webhook bodies are on the hot path."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> str:
    try:
        # Non-string keys: marshmallow keys the errors of a list's items by index.
        return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        # orjson refuses integers past 64 bits and lone surrogates, which an error message
        # may echo back from a client's input; the stdlib escapes them.
        return json.dumps(value, default=_default)
