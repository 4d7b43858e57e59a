"""OpenTelemetry, opt-in: with traces on, one trace goes from a claim request through its SQL
and Redis calls to the webhook delivery job the worker runs for it (RQ job in-process, real
Redis, spans in the SDK's InMemorySpanExporter); off (the default), nothing is installed and
the app runs without the packages."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app.core import events as ev
from app.observability import telemetry
from app.observability.logs import job_meta, request_id
from tests.api.test_webhooks import queue, register, relay, rq_connection, work  # noqa: F401  (fixtures)
from tests.support.receiver import Receiver
from tests.support.servers import ROOT

CLAIM_ROUTE = "/v1/purchases/<string(maxlength=64):purchase_id>/claim"
SQL_SCOPE = "opentelemetry.instrumentation.sqlalchemy"
REDIS_SCOPE = "opentelemetry.instrumentation.redis"


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


@pytest.fixture
def app_config(app_config, exporter):
    return {
        **app_config,
        "WEBHOOK_RETRY_BASE_SECONDS": 1,
        "WEBHOOK_MAX_RETRIES": 3,
        "WEBHOOK_ALLOW_PRIVATE_URLS": True,  # the receiver runs on 127.0.0.1
        "OTEL_TRACES": True,
        "OTEL_SPAN_EXPORTER": exporter,
    }


@pytest.fixture
def app(app):
    yield app
    telemetry.shutdown(app)  # uninstrumented again: the tests after this one run untraced


def finished(exporter) -> list:
    telemetry.flush()
    return list(exporter.get_finished_spans())


def scope(span) -> str:
    return span.instrumentation_scope.name


def test_one_trace_from_a_claim_to_its_webhook_delivery(api, work, exporter):  # noqa: F811
    deal = api.create_deal(quantity=5)
    with Receiver(statuses=[500]) as receiver:
        register(api, receiver.url, [ev.PURCHASE_FULFILLED])
        held = api.reserved(deal["id"], 2)
        telemetry.flush()
        exporter.clear()
        caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # the checkout's own trace
        claimed = api.claim(held["id"], "user-7", headers={"traceparent": caller})
        assert claimed.status_code == 200
        work()  # the first attempt: the receiver answers 500, RQ schedules a retry
        assert [r.answered for r in receiver.received] == [500]

    spans = finished(exporter)
    [request] = [s for s in spans if s.kind is SpanKind.SERVER]
    assert request.attributes["http.route"] == CLAIM_ROUTE
    assert format(request.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"  # continued
    trace_id = request.context.trace_id
    [job] = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert job.name == "workers.jobs.deliver_webhook"
    assert job.context.trace_id == trace_id
    assert job.parent.span_id == request.context.span_id  # enqueued while the request ran
    assert job.attributes["messaging.system"] == "rq"
    assert job.status.status_code is StatusCode.ERROR  # the receiver's 500: a retry after the back-off

    def children(parent) -> list:
        return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]

    # The request's Redis (its SQL runs on the purchase reader's and the group committer's
    # threads, outside the trace), and the job's SQL (the delivery leased, the attempt recorded).
    assert REDIS_SCOPE in {scope(s) for s in children(request)}
    assert SQL_SCOPE in {scope(s) for s in children(job)}
    assert all(s.context.trace_id == trace_id for s in children(request) + children(job))
    # Nothing made outside a request or a job (the worker's own polling of Redis) is recorded.
    assert all(s.parent is not None for s in spans if s.kind is SpanKind.CLIENT)


def test_each_request_is_its_own_trace(api, exporter):
    deal = api.create_deal(quantity=5)
    api.reserved(deal["id"], 1)
    api.reserved(deal["id"], 1)
    requests = [s for s in finished(exporter) if s.kind is SpanKind.SERVER]
    assert len(requests) == 3
    assert len({s.context.trace_id for s in requests}) == 3
    assert all(s.parent is None for s in requests)


def test_a_job_enqueued_outside_a_request_starts_its_own_trace(app, exporter):
    assert telemetry.inject({}) == {}  # no span current: nothing to carry

    class Job:
        meta: dict = {}
        origin = "offer-engine"
        id = "sweep-1"
        func_name = "workers.jobs.sweep"

        def get_status(self, refresh=True):
            return "finished"

    with telemetry.job_span(Job()):
        pass
    [span] = finished(exporter)
    assert (span.name, span.parent, span.kind) == ("workers.jobs.sweep", None, SpanKind.CONSUMER)
    assert span.status.status_code is StatusCode.UNSET


# -- off ----------------------------------------------------------------------------------------------


def test_off_by_default_nothing_is_installed(app_config):
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    from app import create_app

    app = create_app({**app_config, "OTEL_TRACES": False})
    try:
        assert not telemetry.enabled()
        assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
        assert not RedisInstrumentor().is_instrumented_by_opentelemetry
        assert not SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry
        token = request_id.set("req-1")
        try:
            assert job_meta() == {"request_id": "req-1"}  # no trace context carried
        finally:
            request_id.reset(token)
        assert telemetry.job_span(object()) is telemetry.job_span(object())  # one shared null context
        assert app.test_client().get("/healthz").status_code == 200
    finally:
        app.extensions["offer_engine"].close()


def test_the_app_and_worker_run_without_the_packages(database_url, redis_url):
    """Without any opentelemetry package: off, everything works; on, a warning and no traces."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["opentelemetry"] = None  # as if the `otel` extra were not installed
        import workers.__main__
        from app import create_app
        from app.observability import telemetry
        for traces in (False, True):
            app = create_app({{"DATABASE_URL": {database_url!r}, "REDIS_URL": {redis_url!r}, "OTEL_TRACES": traces}})
            assert app.test_client().get("/healthz").status_code == 200
            assert app.test_client().get("/v1/deals").status_code == 401
            assert not telemetry.enabled()
            app.extensions["offer_engine"].close()
        print("ran untraced")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ran untraced" in result.stdout
    assert "the `otel` extra is not installed" in result.stdout + result.stderr
