"""Marshmallow fields that refuse what a careful API refuses: bools posing as integers,
integers posing as strings, NUL bytes, and numbers too large for the database."""

from __future__ import annotations

import numbers
from datetime import UTC

from marshmallow import ValidationError, fields, validate

BIGINT_MAX = 2**63 - 1
#: One coupon is issued per unit, so a single purchase is capped.
MAX_UNITS_PER_PURCHASE = 1000


class StrictInt(fields.Integer):
    """A JSON integer: not a bool, not a string, not 2.0."""

    def __init__(self, *, minimum: int | None = None, maximum: int | None = BIGINT_MAX, **kwargs):
        validators = _validators(kwargs)
        validators.append(validate.Range(min=minimum, max=maximum))
        super().__init__(strict=True, validate=validators, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValidationError("Must be an integer.")
        return super()._deserialize(value, attr, data, **kwargs)


class Id(fields.Integer):
    """An id: a positive integer, given as a JSON number or a string of digits (the seed types
    `deal_id` as a String)."""

    def __init__(self, **kwargs):
        super().__init__(strict=False, validate=validate.Range(min=1, max=BIGINT_MAX), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            raise ValidationError("Must be an id (a positive integer).")
        if isinstance(value, str):
            if not (value.isascii() and value.isdigit()) or len(value) > 19:
                raise ValidationError("Must be an id (a positive integer).")
            value = int(value)
        elif not isinstance(value, numbers.Integral):
            raise ValidationError("Must be an id (a positive integer).")
        return super()._deserialize(value, attr, data, **kwargs)


def _validators(kwargs: dict) -> list:
    given = kwargs.pop("validate", None)
    if given is None:
        return []
    return list(given) if isinstance(given, (list, tuple)) else [given]


def _no_nul(value: str) -> None:
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Must be valid Unicode (no lone surrogates).") from None


class Text(fields.String):
    """A string of bounded length without NUL (which SQL text columns cannot hold)."""

    def __init__(self, *, max_length: int = 200, min_length: int = 0, **kwargs):
        validators = _validators(kwargs)
        validators += [validate.Length(min=min_length, max=max_length), _no_nul]
        super().__init__(validate=validators, **kwargs)


class Units(StrictInt):
    def __init__(self, **kwargs):
        super().__init__(minimum=1, maximum=MAX_UNITS_PER_PURCHASE, **kwargs)


class StrictBool(fields.Boolean):
    """A JSON true or false (a form's "true" / "false"): not 1, not "yes"."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("Must be true or false.")
        return value


class InstantArg(fields.AwareDateTime):
    """An ISO 8601 instant; one without an offset is UTC. Held as an aware UTC datetime."""

    def __init__(self, **kwargs):
        super().__init__(format="iso", default_timezone=UTC, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or len(value) > 64:
            raise ValidationError("Must be an ISO 8601 instant, e.g. 2026-12-24T18:00:00Z.")
        instant = super()._deserialize(value, attr, data, **kwargs).astimezone(UTC)
        if not 2000 <= instant.year <= 9999:
            raise ValidationError("Must be between the years 2000 and 9999.")
        return instant


class QueryInt(fields.Integer):
    """An integer from the query string (where everything is text)."""

    def __init__(self, *, minimum: int | None = None, maximum: int | None = BIGINT_MAX, **kwargs):
        validators = _validators(kwargs)
        validators.append(validate.Range(min=minimum, max=maximum))
        super().__init__(strict=False, validate=validators, **kwargs)
