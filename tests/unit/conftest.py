"""Domain tests: the services built from settings as the web app and the worker build them
(`Services.from_config`), on the same real Redis and SQL backends as every test, without Flask."""

from __future__ import annotations

import pytest

from app.wiring import Services
from config import load_settings
from tests.conftest import empty_stores
from tests.support.domain import Shop


@pytest.fixture
def services(app_config):
    """Overrides the root conftest's (which reaches them through a Flask app); `app_config` is
    still the mapping a test may extend (a CLOCK, a setting)."""
    services = Services.from_config({**load_settings().flask_config(), **app_config})
    empty_stores(services)
    yield services
    services.close()


@pytest.fixture
def shop(services, account) -> Shop:
    return Shop(services, account[0])
