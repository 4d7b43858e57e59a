"""GET /openapi.json is a valid OpenAPI document covering every API route and its errors, and
GET /docs shows it with assets the app serves itself."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

API_PREFIXES = ("/v1", "/v3")


def openapi_path(rule: str) -> str:
    """`/v1/purchases/<string(maxlength=64):purchase_id>` -> `/v1/purchases/{purchase_id}`"""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_the_document_is_valid_openapi(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    validate(response.get_json())


def test_every_api_route_is_documented_with_its_errors(app, client):
    doc = client.get("/openapi.json").get_json()
    routes = [
        (openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(API_PREFIXES)
        for method in rule.methods - {"HEAD", "OPTIONS"}
    ]
    assert len(routes) >= 13
    for path, method in routes:
        operation = doc["paths"].get(path, {}).get(method)
        assert operation is not None, f"{method.upper()} {path} is not documented"
        responses = operation["responses"]
        assert any(status.startswith("2") for status in responses), (path, method)
        public = path.startswith("/v1/public/")
        for status in ("503",) if public else ("401", "503"):
            assert status in responses, (path, method, status)
        if "requestBody" in operation:
            # v3 answers every invalid body with ConvertKit's 400; v1 names fields in a 422.
            for status in ("400", "413", "415", *(("422",) if path.startswith("/v1") else ())):
                assert status in responses, (path, method, status)
        for status, answer in responses.items():
            if status.startswith(("4", "5")) or status == "default":
                # The API's own error body, never flask-smorest's generic `Error` (another shape).
                schema = answer["content"]["application/json"]["schema"]["$ref"]
                assert schema.startswith("#/components/schemas/V"), (path, method, status, schema)
                assert schema.rsplit("/", 1)[-1] in doc["components"]["schemas"]
        if public:  # the storefronts' API: no secret, said so
            assert operation["security"] == [] and "401" not in responses, (path, method)
        else:
            assert operation["security"]
    reserve = doc["paths"]["/v1/purchases/reserve"]["post"]["responses"]
    assert {"404", "409", "422"} <= set(reserve)
    assert set(doc["components"]["securitySchemes"]) == {"bearerSecret", "apiSecretQuery"}
    assert {"/healthz", "/readyz", "/metrics"} <= set(doc["paths"])


def test_the_documented_error_shape_is_what_the_api_sends(client, api):
    doc = client.get("/openapi.json").get_json()
    schema = doc["components"]["schemas"]["V1ErrorBody"]
    body = client.post("/v1/purchases/reserve", json={}).get_json()
    assert set(schema["required"]) <= set(body) <= set(schema["properties"])
    body = api.post("/v1/purchases/reserve", {"deal_id": "x"}).get_json()
    assert set(schema["required"]) <= set(body) <= set(schema["properties"])


def test_swagger_ui_is_served_locally(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(source.startswith("/") for source in sources), sources
    assert "/openapi.json" in html
    for source in sources:
        with client.get(source) as asset:
            assert asset.status_code == 200, source
            assert len(asset.data) > 1000
    assert client.get("/docs/assets/../../app/__init__.py").status_code == 404
