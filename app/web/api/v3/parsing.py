"""How v3 reads a request: JSON numbers as exact Decimals, and every problem as one 400 in
ConvertKit's words ("transaction_id can't be blank, Sku can't be blank for product: ...")."""

from __future__ import annotations

import json
import typing
from decimal import Decimal

import marshmallow as ma
from webargs import core

from app.web.api.blueprint import ApiBlueprint
from app.web.api.parsing import Parser
from app.web.api.v3.schemas import problems
from app.web.errors import ApiError

#: The code behind the seed's 400 title "Your request is missing parameters".
MISSING_PARAMETERS = "missing_parameters"


def load_exact(data: bytes) -> typing.Any:
    """Parse JSON with fractions as Decimal (never a binary float) and NaN / Infinity as
    Decimal too, so that the money fields can refuse them by name."""
    try:
        return json.loads(data.decode("utf-8"), parse_float=Decimal, parse_constant=Decimal)
    except json.JSONDecodeError:
        raise
    except ValueError as error:
        # e.g. an integer literal with more digits than Python converts
        raise json.JSONDecodeError(str(error), "<body>", 0) from None


class V3Parser(Parser):
    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req) -> typing.Any:
        data = req.get_data(cache=True)
        if not data or not data.strip():
            return core.missing
        return load_exact(data)

    def _handle_invalid_json_error(self, error, req, *args, **kwargs) -> typing.NoReturn:
        raise ApiError(400, "invalid_json", "The request body is not valid JSON")

    def handle_error(self, error: ma.ValidationError, req, schema, *, error_status_code, error_headers):
        try:
            body = load_exact(req.get_data(cache=True) or b"null")
        except ValueError:
            body = None
        messages = error.messages if isinstance(error.messages, dict) else {"json": error.messages}
        found = problems(messages, body) or ["Invalid request"]
        raise ApiError(400, MISSING_PARAMETERS, ", ".join(found))


class V3Blueprint(ApiBlueprint):
    ARGUMENTS_PARSER = V3Parser()
