"""The HTTP edge: everything that knows about HTTP, Flask or WSGI, and nothing else does.

flask_app.py      the Flask application class (and its orjson JSON provider)
envelope.py       the WSGI request envelope: request id, HTTP metrics, access log line
sold_out_gate.py  the flash sale's sold-out answers, before Flask
errors.py         domain errors -> HTTP answers, in the error body of the API that was called
api/              the API blueprints (api/v1, api/v3, api/public) and what they share: auth,
                  parsing, limits
dashboard/        the ops page (templates and static files beside it)
storefront/       an example storefront page for a public deal (its template and files beside it)
openapi.py        /openapi.json and /docs
ops.py            /healthz, /readyz, /metrics
cli.py            `flask --app app ...` commands
services.py       the one way a view reaches the services

Views get schema-checked arguments, call one service method, and hand its result to a schema.
"""
