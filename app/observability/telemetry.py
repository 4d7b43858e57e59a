"""OpenTelemetry traces: off unless OpenTelemetry's own variables ask for them.

With OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or OTEL_TRACES_EXPORTER
set (`config.otel_traces_requested`) and the `otel` extra installed, the web app and the worker
export traces made by OpenTelemetry's own instrumentations:

* one SERVER span per request that reaches Flask (opentelemetry-instrumentation-flask; it
  continues a caller's `traceparent`);
* a CLIENT span per SQL statement (-sqlalchemy, on the service's engines) and per Redis
  command or pipeline (-redis, every client in the process, the RQ queue's included);
* one CONSUMER span per RQ job, child of the request that enqueued it: `job_meta()`
  (app/observability/logs.py) puts the request's W3C trace context in the job's `meta` beside its request id,
  and the worker (`workers/__main__.py`) runs the job inside `job_span(job)`. A webhook
  delivery is thus in the trace of the claim that caused it.

Redis and SQL calls made outside any request or job (the RQ worker waiting for work, the sweep
ticker, the group committer's thread) would each start a trace of their own, one every few
milliseconds; they are not recorded (the sampler drops a CLIENT span without a parent). Root spans
that are kept follow OTEL_TRACES_SAMPLER=traceidratio / parentbased_traceidratio with
OTEL_TRACES_SAMPLER_ARG when set, else all are kept; a span with a parent follows its parent.

Exporters (OTEL_TRACES_EXPORTER, comma-separated): `otlp` (the default; OTLP over
HTTP/protobuf, to OTEL_EXPORTER_OTLP_ENDPOINT, port 4318 by OpenTelemetry's convention) and
`console`. OTEL_SERVICE_NAME names the service (default offer-engine-web / offer-engine-worker).

Off, which is the default, nothing is imported and nothing is installed: `init_app` and
`init_worker` return at once, `job_meta()` checks one module variable per job enqueued, and
`job_span()` hands back one shared null context. No request does any work for telemetry.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

#: Key of the W3C trace context (`traceparent`, `tracestate`) in an RQ job's `meta`.
TRACE_META_KEY = "trace_context"
#: Requests that are not traced unless OTEL_PYTHON_FLASK_EXCLUDED_URLS says otherwise: probes
#: and scrapes, several a second, that no trace is wanted for.
EXCLUDED_URLS = "healthz,readyz,metrics"
EXPORTERS = ("otlp", "console")

#: The tracer provider of this process while tracing is on; None when off (the default).
_provider: Any = None
_tracer: Any = None
_NOT_TRACED = contextlib.nullcontext()


def enabled() -> bool:
    return _provider is not None


def init_app(app) -> None:
    """Trace the web app's requests, SQL and Redis when `OTEL_TRACES` is on. Called last in
    create_app, so that the Flask instrumentation wraps the whole WSGI stack."""
    if not app.config.get("OTEL_TRACES"):
        return
    provider = start("web", exporter=app.config.get("OTEL_SPAN_EXPORTER"))
    if provider is None:
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls=os.environ.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS", EXCLUDED_URLS),
        enable_commenter=False,
    )
    # Its span starts in a before_request hook: first, so that a request refused by an earlier
    # hook (the write limit's 429) has a span too.
    hooks = app.before_request_funcs.setdefault(None, [])
    hooks.insert(0, hooks.pop(hooks.index(app._before_request)))
    instrument_services(app.extensions["offer_engine"])


def init_worker(services, config: dict) -> None:
    """Trace the worker's jobs, SQL and Redis when `OTEL_TRACES` is on."""
    if not config.get("OTEL_TRACES"):
        return
    if start("worker", exporter=config.get("OTEL_SPAN_EXPORTER")) is not None:
        instrument_services(services)


def start(role: str, *, exporter: Any = None) -> Any:
    """This process's tracer provider, made on first use: its exporters from the environment
    (or `exporter`, for tests), and Redis instrumented. None when the `otel` extra is missing
    (logged: the process runs untraced)."""
    global _provider, _tracer
    if _provider is not None:
        return _provider
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as error:
        log.warning(
            "OpenTelemetry traces were asked for, but the `otel` extra is not installed; not tracing",
            extra={"error": str(error)},
        )
        return None
    exporters = [exporter] if exporter is not None else _exporters_from_environment()
    if not exporters:
        return None
    service = os.environ.get("OTEL_SERVICE_NAME", "").strip() or f"offer-engine-{role}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=_sampler())
    for each in exporters:
        provider.add_span_processor(BatchSpanProcessor(each))
    if exporter is None:
        trace.set_tracer_provider(provider)  # for any other instrumentation in the process
    RedisInstrumentor().instrument(tracer_provider=provider)
    _tracer = provider.get_tracer(__name__)
    _provider = provider
    log.info("exporting OpenTelemetry traces", extra={"service": service, "role": role})
    return provider


def _exporters_from_environment() -> list[Any]:
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    exporters: list[Any] = []
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())  # reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT itself
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name != "none":
            log.warning("unknown OTEL_TRACES_EXPORTER; ignored", extra={"exporter": name, "known": EXPORTERS})
    return exporters


def _sampler() -> Any:
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    kept = ALWAYS_ON
    if os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() in ("traceidratio", "parentbased_traceidratio"):
        try:
            kept = TraceIdRatioBased(float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")))
        except ValueError:
            log.warning("OTEL_TRACES_SAMPLER_ARG is not a ratio; keeping every trace")
    return ParentBased(root=_roots(kept))


def _roots_class() -> type:
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import SpanKind

    class Roots(Sampler):
        """For spans without a parent: a CLIENT span (a Redis command or SQL statement outside
        any request or job) is dropped; any other is up to `kept`."""

        def __init__(self, kept: Sampler) -> None:
            self.kept = kept

        def should_sample(
            self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None
        ):
            if kind is SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)
            return self.kept.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"RootsNotClients{{{self.kept.get_description()}}}"

    return Roots


def _roots(kept: Any) -> Any:
    """`Roots(kept)`, its class built on first use (the SDK is an optional import)."""
    return _roots_class()(kept)


def instrument_services(services) -> None:
    """Trace the SQL of the service's engines (the primary and the reports' replica)."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    engines = list(dict.fromkeys([services.db.engine, services.reports_db.engine]))
    instrumentor = SQLAlchemyInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        # The instrumentation declares SQLAlchemy < 2.1; it hooks the engine events 2.1 still
        # has (tests/api/test_telemetry.py checks the statements' spans on both backends).
        instrumentor.instrument(engines=engines, tracer_provider=_provider, skip_dep_check=True)


# -- RQ jobs ----------------------------------------------------------------------------------


def inject(meta: dict) -> dict:
    """Put the current trace context in an RQ job's `meta` (when tracing is on)."""
    if _provider is not None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        if carrier:
            meta[TRACE_META_KEY] = carrier
    return meta


def job_span(job) -> contextlib.AbstractContextManager:
    """The context a worker runs `job` in: a CONSUMER span whose parent is the trace context
    in the job's meta (the request that enqueued it); a shared null context when off."""
    if _provider is None:
        return _NOT_TRACED
    return _job_span(job)


@contextlib.contextmanager
def _job_span(job):
    from opentelemetry.trace import SpanKind, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = (job.meta or {}).get(TRACE_META_KEY) or {}
    parent = TraceContextTextMapPropagator().extract(carrier) if isinstance(carrier, dict) else None
    attributes = {
        "messaging.system": "rq",
        "messaging.operation.type": "process",
        "messaging.destination.name": job.origin or "",
        "messaging.message.id": job.id,
        "rq.job.func_name": job.func_name or "",
    }
    with _tracer.start_as_current_span(
        job.func_name or "rq job", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span
        # RQ catches the job's exception itself (and schedules a retry): its status says.
        status = job.get_status(refresh=False)
        status = getattr(status, "value", status)
        span.set_attribute("rq.job.status", str(status))
        if status != "finished":
            span.set_status(StatusCode.ERROR, f"job {status}")


# -- tests and exit ----------------------------------------------------------------------------


def flush(timeout_millis: int = 10_000) -> None:
    """Export every span ended so far."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)


def shutdown(app=None) -> None:
    """Undo `start` (and `init_app` on `app`): uninstrument, export what is left, forget the
    provider. For tests; a process that exits is flushed by the SDK's own exit hook."""
    global _provider, _tracer
    if _provider is None:
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    if app is not None and getattr(app, "_is_instrumented_by_opentelemetry", False):
        FlaskInstrumentor.uninstrument_app(app)
    RedisInstrumentor().uninstrument()
    if SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry:
        SQLAlchemyInstrumentor().uninstrument()
    _provider.shutdown()
    _provider = _tracer = None
