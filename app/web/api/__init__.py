"""The APIs: one blueprint each (v1/, v3/, and public/ for storefronts), and what they share:
the blueprint itself (blueprint.py), body parsing, fields, authentication, the write limit and
Idempotency-Key.
Views get schema-checked arguments, call one service method, and return its result for a schema."""

from flask import Flask
from flask_smorest import Api
from werkzeug.routing import IntegerConverter

from app.web.api.fields import BIGINT_MAX
from app.web.errors import ErrorBodies


class IdConverter(IntegerConverter):
    """`<int:...>` bounded to a 64-bit id, so a huge number in a URL is a 404, not a SQL error."""

    def __init__(self, url_map, **kwargs):
        super().__init__(url_map, min=1, max=BIGINT_MAX)


def register_apis(app: Flask) -> Api:
    app.url_map.converters["int"] = IdConverter
    api = Api(app)
    api.register_converter(IdConverter, lambda _: {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX})
    from app.web import sold_out_gate
    from app.web.api import public, ratelimit
    from app.web.api.v1 import blp as v1
    from app.web.api.v3 import blp as v3

    bodies = ErrorBodies.of(app)
    for blueprint in (v1, v3, public.blp):
        api.register_blueprint(blueprint)
        bodies.add(blueprint.name, blueprint.url_prefix, blueprint.error_body)
    public.init_app(app)
    # Not the public blueprint: a storefront's requests are nobody's writes (and carry no secret).
    limit = ratelimit.init_app(app, [v1, v3])
    sold_out_gate.init_app(app, limit)
    app.extensions["offer_engine_api"] = api
    return api
