"""When traces are on."""

from __future__ import annotations

from config import load_settings
from tests.api.test_webhooks import queue, register, relay, rq_connection, work  # noqa: F401  (fixtures)


def test_otels_own_variables_turn_it_on():
    assert load_settings({}).otel_traces is False
    assert load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}).otel_traces is True
    assert load_settings({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}).otel_traces
    assert load_settings({"OTEL_TRACES_EXPORTER": "console"}).otel_traces is True
    assert (
        load_settings({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}).otel_traces
        is False
    )
    assert (
        load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}).otel_traces
        is False
    )
