"""v3 request and response schemas, in ConvertKit's words.

Field error messages are the *end* of a ConvertKit sentence ("can't be blank"); `problems()`
turns a whole marshmallow error tree into the sentences of the seed's 400 body, in the order
the fields are declared here: "transaction_id can't be blank, Sku can't be blank for product:
Floppy Disk (512k)".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate, validates_schema

from app.inventory.ledger import DEFAULT_CURRENCY, DEFAULT_STATUS, ZERO, NewPurchase, Product

#: Amounts are bounded so that they survive every backend exactly: SQLite keeps NUMERIC as an
#: 8-byte float, which holds 15 significant digits (11 before the point, 4 after).
MONEY_LIMIT = Decimal(10) ** 11
MONEY_STEP = Decimal("0.0001")
QUANTITY_MAX = 10**9
MAX_PRODUCTS = 1000
PAGE_MAX = 10**18
MONEY_FIELDS = ("subtotal", "shipping", "discount", "tax", "total")


# -- fields ----------------------------------------------------------------------------------


class Str(fields.String):
    """A string of bounded length, without NUL (SQL cannot store it) or lone surrogates."""

    default_error_messages = {
        "required": "can't be blank",
        "null": "can't be blank",
        "blank": "can't be blank",
        "invalid": "must be a string",
        "too_long": "is too long (maximum is {maximum} characters)",
        "nul": "must not contain NUL characters",
        "unicode": "must be valid Unicode text",
    }
    #: The bound: the field's own, or its class's (an email address, a currency code).
    max_length: int

    def __init__(self, *, max_length: int | None = None, blank_ok: bool = False, integers: bool = False, **kwargs):
        super().__init__(**kwargs)
        if max_length is not None:
            self.max_length = max_length
        self.blank_ok = blank_ok
        #: Also take a JSON integer, as its digits (order ids and skus are often numbers).
        self.integers = integers
        self.metadata.setdefault("maxLength", self.max_length)

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        if self.integers and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise self.make_error("invalid")
        if not self.blank_ok and not value.strip():
            raise self.make_error("blank")
        if len(value) > self.max_length:
            raise self.make_error("too_long", maximum=self.max_length)
        if "\x00" in value:
            raise self.make_error("nul")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise self.make_error("unicode") from None
        return value

    def _serialize(self, value, attr, obj, **kwargs):
        return value


class Email(Str):
    default_error_messages = {"invalid_email": "is invalid"}
    max_length = 320

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        value = super()._deserialize(value, attr, data, **kwargs)
        if not re.fullmatch(r"[^@\s]+@[^@\s]+", value):
            raise self.make_error("invalid_email")
        return value


class Currency(Str):
    default_error_messages = {"code": "must be a 3-letter currency code"}
    max_length = 3

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        if isinstance(value, str) and not re.fullmatch(r"[A-Za-z]{3}", value):
            raise self.make_error("code")
        return super()._deserialize(value, attr, data, **kwargs).upper()


class TransactionTime(fields.String):
    """ISO 8601 ("2018-03-20T14:31:10Z", offsets allowed) or "YYYY-MM-DD HH:MM:SS"; a time
    without an offset is UTC. Kept in UTC."""

    default_error_messages = {
        "invalid": "is not a valid date and time (use ISO 8601 or YYYY-MM-DD HH:MM:SS)",
    }

    def _deserialize(self, value, attr, data, **kwargs) -> datetime:
        if not isinstance(value, str) or len(value) > 64:
            raise self.make_error("invalid")
        try:
            instant = datetime.fromisoformat(value.strip())
            if instant.tzinfo is None:
                return instant.replace(tzinfo=UTC)
            return instant.astimezone(UTC)
        except (ValueError, OverflowError):
            raise self.make_error("invalid") from None


class LedgerTime(fields.String):
    """How ConvertKit shows a transaction time: "2018-03-20 14:31" (UTC)."""

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _decimal(value: Any) -> Decimal | None:
    """A JSON number as an exact Decimal (the v3 parser reads every fraction as a Decimal)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    return None


class Money(fields.Float):
    """An amount: a JSON number (an integer is fine), exact, |x| < 10^11, at most 4 decimals."""

    default_error_messages = {
        "invalid": "is not a number",
        "range": "must be between -99999999999.9999 and 99999999999.9999",
        "places": "must have at most 4 decimal places",
    }

    def _deserialize(self, value, attr, data, **kwargs) -> Decimal:
        amount = _decimal(value)
        if amount is None:
            raise self.make_error("invalid")
        if abs(amount) >= MONEY_LIMIT:
            raise self.make_error("range")
        try:
            exact = amount.quantize(MONEY_STEP)
        except InvalidOperation:
            raise self.make_error("places") from None
        if exact != amount:
            raise self.make_error("places")
        return exact

    def _serialize(self, value, attr, obj, **kwargs):
        # A JSON number, as the seed shows them (20.0).
        return None if value is None else float(value)


class Quantity(fields.Integer):
    default_error_messages = {
        "invalid": "must be an integer",
        "range": "must be between 0 and {maximum}",
    }

    def _deserialize(self, value, attr, data, **kwargs) -> int:
        number = _decimal(value)
        if number is None or number != number.to_integral_value():
            raise self.make_error("invalid")
        if not 0 <= number <= QUANTITY_MAX:
            raise self.make_error("range", maximum=QUANTITY_MAX)
        return int(number)


class PageNumber(fields.Integer):
    """A page number (or an id) from the query string ("2") or a JSON body (2)."""

    default_error_messages = {"invalid": "must be a positive integer", "null": "must be a positive integer"}

    def _deserialize(self, value, attr, data, **kwargs) -> int:
        if isinstance(value, str):
            text = value.strip()
            number = int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else None
        else:
            decimal = _decimal(value)
            integral = decimal is not None and decimal == decimal.to_integral_value() and abs(decimal) <= PAGE_MAX
            number = int(decimal) if integral else None
        if number is None or not 1 <= number <= PAGE_MAX:
            raise self.make_error("invalid")
        return number


# -- requests --------------------------------------------------------------------------------


class V3Args(Schema):
    """Unknown fields are refused, with their names; a body that is not an object too."""

    error_messages = {"unknown": "is not a permitted parameter", "type": "must be an object"}


class V3ProductArgs(V3Args):
    name = Str(max_length=500, blank_ok=True, allow_none=True)
    sku = Str(max_length=200, required=True, integers=True)
    unit_price = Money(allow_none=True)
    quantity = Quantity(
        allow_none=True,
        metadata={"description": "Default 1. A product whose sku names a deal takes that many units (≥ 1)."},
    )


class V3PurchaseArgs(V3Args):
    transaction_id = Str(max_length=200, required=True, integers=True)
    email_address = Email(required=True)
    currency = Currency(allow_none=True, metadata={"description": "Upper-cased; default USD."})
    transaction_time = TransactionTime(
        allow_none=True, metadata={"description": "ISO 8601 or YYYY-MM-DD HH:MM:SS (UTC); default now."}
    )
    subtotal = Money(allow_none=True)
    tax = Money(allow_none=True)
    shipping = Money(allow_none=True)
    discount = Money(allow_none=True)
    total = Money(allow_none=True)
    status = Str(max_length=50, allow_none=True, metadata={"description": 'Default "paid".'})
    products = fields.List(
        fields.Nested(V3ProductArgs),
        allow_none=True,
        validate=validate.Length(max=MAX_PRODUCTS, error=f"must have at most {MAX_PRODUCTS} products"),
        error_messages={"invalid": "must be an array"},
    )

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _unique_skus(self, data, original_data, **kwargs):
        products = original_data.get("products") if isinstance(original_data, dict) else None
        if not isinstance(products, list):
            return
        seen: set[str] = set()
        repeated = {}
        for index, product in enumerate(products):
            sku = product.get("sku") if isinstance(product, dict) else None
            if isinstance(sku, str) and sku.strip():
                if sku in seen:
                    repeated[index] = {"sku": ["must be unique within the purchase"]}
                seen.add(sku)
        if repeated:
            raise ValidationError({"products": repeated})

    @post_load
    def _to_purchase(self, data, **kwargs) -> NewPurchase:
        return NewPurchase(
            transaction_id=data["transaction_id"],
            email_address=data["email_address"],
            currency=data.get("currency") or DEFAULT_CURRENCY,
            transaction_time=data.get("transaction_time"),
            status=data.get("status") or DEFAULT_STATUS,
            **{name: ZERO if data.get(name) is None else data[name] for name in MONEY_FIELDS},
            products=tuple(
                Product(
                    sku=p["sku"],
                    name=p.get("name"),
                    unit_price=p.get("unit_price"),
                    quantity=1 if p.get("quantity") is None else p["quantity"],
                )
                for p in data.get("products") or ()
            ),
        )


class V3Ignored(fields.Raw):
    """Accepted and ignored (ConvertKit clients send `page` with every call)."""

    def __init__(self, **kwargs):
        super().__init__(load_only=True, allow_none=True, metadata={"description": "Ignored."}, **kwargs)


def _required_object(schema: type[Schema], **kwargs) -> fields.Nested:
    return fields.Nested(
        schema, required=True, error_messages={"required": "can't be blank", "null": "can't be blank"}, **kwargs
    )


class V3CreateArgs(V3Args):
    purchase = _required_object(V3PurchaseArgs)
    page = V3Ignored()


class V3StatusArgs(V3Args):
    """Only `status` changes. Any other field is ignored, whatever its value, as ConvertKit's
    Rails API ignores unpermitted parameters: a client may send the whole purchase back."""

    class Meta:
        unknown = EXCLUDE

    status = Str(max_length=50, required=True)


class V3UpdateArgs(V3Args):
    class Meta:
        unknown = EXCLUDE  # (ignored, as inside `purchase`)

    purchase = _required_object(
        V3StatusArgs,
        metadata={"description": "Only `status` is read; any other field is ignored (200, nothing else changes)."},
    )
    #: The seed lists the purchase id among the parameters: a client may repeat it in the body.
    id = PageNumber(metadata={"description": "Optional; must be the id in the URL."})
    page = V3Ignored()


class V3PageQuery(Schema):
    page = PageNumber(metadata={"description": "Default 1; 50 purchases a page, oldest first."})


class V3PageBody(V3Args):
    """ConvertKit clients send their parameters as a JSON body, even with GET."""

    page = PageNumber()


class V3OneArgs(V3Args):
    """A GET's JSON body may carry the secret and the purchase id (and `page`), nothing else."""

    id = PageNumber(metadata={"description": "Optional; must be the id in the URL."})
    page = V3Ignored()


# -- responses -------------------------------------------------------------------------------


class V3ProductSchema(Schema):
    unit_price = Money()
    quantity = fields.Integer()
    sku = fields.String()
    name = fields.String(allow_none=True)


class V3PurchaseSchema(Schema):
    id = fields.Integer()
    transaction_id = fields.String()
    status = fields.String(allow_none=True)
    email_address = fields.String(allow_none=True)
    currency = fields.String(allow_none=True)
    transaction_time = LedgerTime(metadata={"description": '"YYYY-MM-DD HH:MM", UTC.'})
    subtotal = Money()
    shipping = Money()
    discount = Money()
    tax = Money()
    total = Money()
    products = fields.List(fields.Nested(V3ProductSchema), attribute="items")


class V3PurchasePageSchema(Schema):
    total_purchases = fields.Integer()
    page = fields.Integer()
    total_pages = fields.Integer()
    purchases = fields.List(fields.Nested(V3PurchaseSchema))


class V3ErrorSchema(Schema):
    error = fields.String(metadata={"description": 'A title, e.g. "Your request is missing parameters".'})
    message = fields.String()


# -- error messages --------------------------------------------------------------------------

PURCHASE_ORDER = list(V3PurchaseArgs._declared_fields)
PRODUCT_ORDER = list(V3ProductArgs._declared_fields)


def _leaves(messages: Any) -> Iterator[str]:
    if isinstance(messages, dict):
        for value in messages.values():
            yield from _leaves(value)
    elif isinstance(messages, list):
        for value in messages:
            yield from _leaves(value)
    else:
        yield str(messages)


def _ordered(messages: dict, order: list[str]) -> list:
    known = [key for key in order if key in messages]
    return ["_schema"] * ("_schema" in messages) + known + [k for k in messages if k not in known and k != "_schema"]


def _label(body: Any, index: int) -> str:
    """How a product is named in a message: its name, else its sku, else its position."""
    try:
        product = body["purchase"]["products"][index]
        label = next(v for v in (product.get("name"), product.get("sku")) if isinstance(v, str) and v.strip())
    except (KeyError, IndexError, TypeError, AttributeError, StopIteration):
        return f"#{index + 1}"
    return label if len(label) <= 100 else label[:99] + "…"


def _product_problems(messages: dict, body: Any) -> Iterator[str]:
    for index in sorted(k for k in messages if isinstance(k, int)):
        label = _label(body, index)
        problems = messages[index]
        if not isinstance(problems, dict):
            problems = {"_schema": problems}
        for key in _ordered(problems, PRODUCT_ORDER):
            for text in _leaves(problems[key]):
                if key == "_schema":
                    yield f"Product {index + 1} {text}"
                elif key in PRODUCT_ORDER:
                    yield f"{key.replace('_', ' ').capitalize()} {text} for product: {label}"
                else:
                    yield f"{key} {text} for product: {label}"


def _purchase_problems(messages: Any, body: Any) -> Iterator[str]:
    if not isinstance(messages, dict):
        messages = {"_schema": messages}
    for key in _ordered(messages, PURCHASE_ORDER):
        value = messages[key]
        if key == "products" and isinstance(value, dict):
            yield from _product_problems(value, body)
            yield from (f"products {text}" for text in _leaves(value.get("_schema", [])))
        else:
            name = "purchase" if key == "_schema" else key
            yield from (f"{name} {text}" for text in _leaves(value))


def problems(messages: dict, body: Any) -> list[str]:
    """Every problem in a marshmallow error tree (by location, as webargs reports them) as
    ConvertKit sentences, in field order. `body` is the request's JSON, to name products."""
    out: list[str] = []
    for location_messages in messages.values():
        if not isinstance(location_messages, dict):
            out += [f"The request body {text}" for text in _leaves(location_messages)]
            continue
        for key in _ordered(location_messages, ["purchase"]):
            value = location_messages[key]
            if key == "purchase":
                out += _purchase_problems(value, body)
            elif key == "_schema":
                out += [f"The request body {text}" for text in _leaves(value)]
            else:
                out += [f"{key} {text}" for text in _leaves(value)]
    return out
