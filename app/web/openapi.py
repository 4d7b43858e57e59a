"""GET /docs (Swagger UI) and GET /openapi.json, generated from the marshmallow schemas.

flask-smorest writes the document from the blueprints' schemas. This module completes it for
whatever API blueprints are registered (by one `Api` or several, with config prefixes):

* every operation under /v1 and /v3 gets the answers every request can get (401 without a
  valid secret, except on a public API's, which say `security: []`; 503 when a store is
  unreachable; 400/413/415 for a body), in the error body of its API, and flask-smorest's
  generic error responses are replaced by that body;
* the ways to present the secret become security schemes;
* /healthz, /readyz and /metrics are listed too;
* one schema per error body: the views' own error schemas (V1Error, V3Error) are the same
  bodies as V1ErrorBody / V3ErrorBody, so their references point there, and schemas that
  nothing references any more (flask-smorest's generic `Error`) are dropped. A client
  generated from the document (tests/e2e/test_integration.py runs one made by
  openapi-python-client) then has one error model per API.

Swagger UI's files come from the `flask-swagger-ui` wheel and are served by the app itself
(under /docs/assets/), so the page works without the internet.
"""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

from flask import Flask, current_app, send_from_directory

from app.web.errors import V1_BODY, V3_BODY, ErrorBodies

ASSETS_URL = "/docs/assets/"

V1_ERROR = V1_BODY.documented_as
V3_ERROR = V3_BODY.documented_as
#: The views' error schemas (app/web/api/v1/schemas.py V1ErrorSchema, v3's V3ErrorSchema): the
#: same bodies, documented once.
SAME_AS = {"V1Error": V1_ERROR, "V3Error": V3_ERROR}

ERROR_SCHEMAS = {
    V1_ERROR: {
        "type": "object",
        "description": "Every v1 error: a stable machine code and a sentence.",
        "properties": {
            "status": {"type": "string", "enum": ["error"]},
            "error": {"type": "string", "description": "Machine-readable code, e.g. sold_out."},
            "message": {"type": "string"},
            "errors": {
                "type": "object",
                "description": "Per-field problems (422 only).",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
        },
        "required": ["status", "error", "message"],
    },
    V3_ERROR: {
        "type": "object",
        "description": "Every v3 error (ConvertKit's shape).",
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
        "required": ["error", "message"],
    },
}

SECURITY_SCHEMES = {
    "bearerSecret": {
        "type": "http",
        "scheme": "bearer",
        "description": "The account's API secret: `Authorization: Bearer oe_...`.",
    },
    "apiSecretQuery": {
        "type": "apiKey",
        "in": "query",
        "name": "api_secret",
        "description": "The secret in the query string (it may also be sent as `api_secret` in the JSON body).",
    },
}

COMMON_ERRORS = {
    "401": "No API secret, or a wrong one (error `unauthorized`).",
    "503": "Redis or SQL is unreachable, or a deal's live state is being rebuilt; retry after Retry-After.",
}
BODY_ERRORS = {
    "400": "The body is not valid JSON (error `invalid_json`), or not a valid form (v1, `invalid_form`).",
    "413": "The body is larger than MAX_BODY_BYTES (error `payload_too_large`).",
    "415": "The body's Content-Type is not JSON (v1: nor a form) (error `unsupported_media_type`).",
}

OPS_PATHS: dict[str, Any] = {
    "/healthz": {
        "get": {
            "tags": ["ops"],
            "summary": "The process is up",
            "responses": {"200": {"description": "Up."}},
        }
    },
    "/readyz": {
        "get": {
            "tags": ["ops"],
            "summary": "Redis and SQL both answer",
            "responses": {"200": {"description": "Ready."}, "503": {"description": "Names the store that is down."}},
        }
    },
    "/metrics": {
        "get": {
            "tags": ["ops"],
            "summary": "Prometheus metrics (text format)",
            "responses": {
                "200": {"description": "Prometheus text exposition format.", "content": {"text/plain": {}}},
                "401": {"description": "METRICS_TOKEN is set and the bearer token does not match."},
            },
        }
    },
}

DESCRIPTION = """\
Inventory reservations for flash sales (v1) and a ConvertKit-compatible purchases ledger (v3).

Every /v1 and /v3 request needs the account's API secret (Bearer header, `api_secret` query
parameter, or `api_secret` in the JSON body). Writes accept an `Idempotency-Key` header. Every
response carries `X-Request-ID` (yours, when you send a sane one). A v1 write takes its body as
JSON or as a form (`application/x-www-form-urlencoded`: the same fields, flat, numbers as digits,
a list's values under its name repeated), with the same validation.

Webhook deliveries (`POST /v1/webhooks`) are JSON POSTs signed as Standard Webhooks
(https://www.standardwebhooks.com): `webhook-id` (the same on every retry), `webhook-timestamp`
and `webhook-signature: v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}">`, keyed with the
webhook's `whsec_` secret; verify them with the `standardwebhooks` library of your language. The
older `X-OfferEngine-Signature` header is sent beside them until release 0.2.0.
"""

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def swagger_ui_dir() -> str:
    return str(resources.files("flask_swagger_ui") / "dist")


def configure(app: Flask) -> None:
    """Settings flask-smorest reads when its `Api` is created (call before that)."""
    app.config.setdefault("OPENAPI_SWAGGER_UI_PATH", "docs")
    app.config.setdefault("OPENAPI_SWAGGER_UI_URL", ASSETS_URL)
    app.config.setdefault("OPENAPI_SWAGGER_UI_CONFIG", {"deepLinking": True, "displayRequestDuration": True})


def _error_response(description: str, schema: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _merge(into: dict, other: dict) -> None:
    for path, item in other.get("paths", {}).items():
        into.setdefault("paths", {}).setdefault(path, {}).update(item)
    for section, entries in other.get("components", {}).items():
        target = into.setdefault("components", {}).setdefault(section, {})
        for name, value in entries.items():
            target.setdefault(name, value)
    known = {tag["name"] for tag in into.get("tags", [])}
    into.setdefault("tags", []).extend(tag for tag in other.get("tags", []) if tag["name"] not in known)


def openapi_document(app: Flask) -> dict:
    apis = [entry["ext_obj"] for entry in app.extensions["flask-smorest"]["apis"].values()]
    doc = copy.deepcopy(apis[0].spec.to_dict())
    for api in apis[1:]:
        _merge(doc, api.spec.to_dict())
    doc.setdefault("info", {}).setdefault("description", DESCRIPTION)
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(copy.deepcopy(ERROR_SCHEMAS))
    components.setdefault("securitySchemes", {}).update(copy.deepcopy(SECURITY_SCHEMES))
    bodies = ErrorBodies.of(app)
    # The mount points of the APIs anyone may call without a secret (app/web/api/public).
    public = tuple(
        blueprint.url_prefix + "/"
        for blueprint in app.blueprints.values()
        if getattr(blueprint, "requires_account", True) is False
    )
    for path, item in doc.get("paths", {}).items():
        body = bodies.for_path(path)
        if body is None:
            continue
        schema = body.documented_as
        for method in METHODS:
            operation = item.get(method)
            if operation is not None:
                _complete(operation, schema, public=bool(public) and path.startswith(public))
    _use_one_schema_per_error_body(doc)
    for path, item in OPS_PATHS.items():
        doc["paths"].setdefault(path, copy.deepcopy(item))
    if not any(tag["name"] == "ops" for tag in doc.get("tags", [])):
        doc.setdefault("tags", []).append({"name": "ops", "description": "Health, readiness and metrics."})
    return doc


def _complete(operation: dict, schema: str, public: bool) -> None:
    responses = operation.setdefault("responses", {})
    for status, response in list(responses.items()):
        if status == "default":
            responses[status] = _error_response("Unexpected error (error `internal_error`).", schema)
        elif "$ref" in response and not (status.startswith("2") or status.startswith("3")):
            # flask-smorest's generic error response (its own body shape): use the API's.
            name = response["$ref"].rsplit("/", 1)[-1].replace("_", " ").capitalize()
            responses[status] = _error_response(name + ".", schema)
    errors = dict(COMMON_ERRORS)
    if public:  # no secret, so never a 401
        del errors["401"]
        operation["security"] = []
    if "requestBody" in operation:
        errors.update(BODY_ERRORS)
    for status, description in errors.items():
        responses.setdefault(status, _error_response(description, schema))
    operation.setdefault("security", [{"bearerSecret": []}, {"apiSecretQuery": []}])


def _use_one_schema_per_error_body(doc: dict) -> None:
    prefix = "#/components/schemas/"

    def repoint(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(prefix) and ref[len(prefix) :] in SAME_AS:
                node["$ref"] = prefix + SAME_AS[ref[len(prefix) :]]
            for value in node.values():
                repoint(value)
        elif isinstance(node, list):
            for value in node:
                repoint(value)

    repoint(doc.get("paths", {}))
    schemas = doc.get("components", {}).get("schemas", {})
    repoint(schemas)
    # Keep what the paths reach, directly or through other schemas.
    reached: set[str] = set()
    pending = [doc.get("paths", {})]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(prefix):
                name = ref[len(prefix) :]
                if name not in reached and name in schemas:
                    reached.add(name)
                    pending.append(schemas[name])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    for name in list(schemas):
        if name not in reached:
            del schemas[name]


def openapi_json():
    document = current_app.extensions.get("offer_engine_openapi")
    if document is None:
        document = current_app.extensions["offer_engine_openapi"] = openapi_document(current_app)
    return current_app.json.response(document)


def swagger_assets(filename: str):
    return send_from_directory(swagger_ui_dir(), filename, max_age=24 * 3600)


def init_app(app: Flask) -> None:
    """After every API blueprint is registered: serve the completed document and the UI's files."""
    for name in list(app.view_functions):
        if name.endswith("api-docs.openapi_json"):
            app.view_functions[name] = openapi_json
    app.add_url_rule(f"{ASSETS_URL}<path:filename>", "swagger_assets", swagger_assets)
