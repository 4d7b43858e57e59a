"""Offer Engine: an inventory reservation service for flash sales.

`create_app` builds the web process: the services from settings (app/wiring.py), then the HTTP
edge around them (app/web). docs/architecture.md shows the layers.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from app.web.flask_app import App
from config import load_settings


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app: settings from the environment, then `config` on top (tests)."""
    # The dashboard's files keep their /static/ URLs, served from beside the dashboard.
    app = App(__name__, instance_relative_config=False, static_folder="web/dashboard/static")
    app.config.from_mapping(load_settings().flask_config())
    app.config.update(
        API_TITLE="Offer Engine",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        JSON_SORT_KEYS=False,
    )
    if config:
        app.config.update(config)
        if "REDIS_URL" in config and "RQ_REDIS_URL" not in config and not os.environ.get("RQ_REDIS_URL"):
            # RQ_REDIS_URL defaults to REDIS_URL, including a REDIS_URL given here.
            app.config["RQ_REDIS_URL"] = config["REDIS_URL"]

    from app.web import envelope, openapi

    # First: every later hook, view and log line of a request sees its request id.
    envelope.init_app(app)
    openapi.configure(app)

    from app.wiring import Services

    app.extensions["offer_engine"] = Services.from_config(app.config)

    from app.web import cli, dashboard, errors, ops, storefront
    from app.web.api import register_apis

    # Before the APIs: they replace the `int` URL converter with one that refuses 0, and the queue
    # page's URLs use instance number 0.
    dashboard.init_app(app)
    register_apis(app)
    storefront.init_app(app)
    errors.init_app(app)
    ops.init_app(app)
    cli.init_app(app)
    openapi.init_app(app)

    from app.observability import telemetry

    # Last: when traces are on, the Flask instrumentation wraps everything above.
    telemetry.init_app(app)
    return app
