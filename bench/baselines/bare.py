"""Baseline (a): bare Flask answering the reserve POST with a fixed JSON body.

Nothing is parsed, checked or stored: this is the most requests per second this stack (Flask
under the Procfile's gunicorn settings) can answer on this machine, the ceiling for the app.

    gunicorn --config python:config.gunicorn 'bench.baselines.bare:create_app()'
"""

from __future__ import annotations

from flask import Flask, jsonify

FIXED = {
    "status": "success",
    "purchase": {
        "id": "bench-fixed-token-000000",
        "deal_id": 1,
        "quantity": 1,
        "fulfillment_state": "reserved",
        "payment_state": "pending",
        "coupons": [],
        "reserved_until": "2030-01-01T00:00:00.000Z",
    },
}


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/v1/purchases/reserve")
    def reserve():
        return jsonify(FIXED)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app
