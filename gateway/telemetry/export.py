"""Traces by OTLP/HTTP: one trace per client request, one child span per upstream call.

Imported only when tracing is on (:mod:`gateway.telemetry.settings`); this is the only module
that imports the OpenTelemetry SDK. Spans are built after the response, from the accounting
record — which already holds every upstream call with its start time, latency, tokens and cost
— so the request path gains no per-call hooks: :class:`TraceMiddleware` notes the request's
start and its ``traceparent``, the record arrives through :class:`TracingMetrics` (the
metrics sink every finished record passes), and the spans are emitted with their real start
and end times once the response is sent. The SDK's batch processor exports off the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core.record import RequestRecord
from gateway.state import MetricsSink
from gateway.telemetry.attributes import call_attributes, call_span_name, request_attributes, request_span_name
from gateway.telemetry.settings import TracingSettings

_REQUEST_ID_HEADER = b"x-slm-gateway-request-id"
_MAX_PENDING = 4096  # records waiting for their response to end; more means something never ends


class Tracer:
    """The process's tracer provider and the records whose responses are still being sent."""

    def __init__(self, settings: TracingSettings) -> None:
        resource = Resource.create({"service.name": settings.service_name})
        self.provider = TracerProvider(resource=resource)
        # The exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, headers, timeout... itself.
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("slm_gateway")
        self.propagator = TraceContextTextMapPropagator()
        self.pending: dict[str, RequestRecord] = {}

    def observed(self, record: RequestRecord) -> None:
        if len(self.pending) >= _MAX_PENDING:
            self.pending.pop(next(iter(self.pending)))
        self.pending[record.request_id] = record

    def emit(self, carrier: Mapping[str, str], method: str, path: str, status: int, start_ns: int, end_ns: int,
             record: RequestRecord | None, providers: Mapping[str, str]) -> None:
        parent: Context = self.propagator.extract(dict(carrier))
        attributes: dict[str, Any] = {"http.request.method": method, "url.path": path,
                                      "http.response.status_code": status}
        name = f"{method} {path}"
        if record is not None:
            attributes.update(request_attributes(record))
            name = request_span_name(record)
        root = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, start_time=start_ns,
                                      attributes=attributes)
        if status >= 500 or (record is not None and record.status != "ok"):
            root.set_status(Status(StatusCode.ERROR, record.status if record is not None else str(status)))
        if record is not None:
            inside = trace.set_span_in_context(root)
            for call in record.calls:
                call_start = int(call.started_at * 1e9)
                span = self.tracer.start_span(call_span_name(record, call), context=inside, kind=SpanKind.CLIENT,
                                              start_time=call_start,
                                              attributes=call_attributes(record, call, providers))
                if call.status not in ("ok", "cancelled"):
                    span.set_status(Status(StatusCode.ERROR, call.status))
                span.end(end_time=call_start + int(call.latency_ms * 1e6))
        root.end(end_time=end_ns)

    def shutdown(self) -> None:
        self.provider.shutdown()  # flushes what the batch processor still holds


class TracingMetrics:
    """The metrics sink, plus: hand every finished record to the tracer."""

    def __init__(self, inner: MetricsSink, tracer: Tracer) -> None:
        self.inner = inner
        self.tracer = tracer

    def observe(self, record: RequestRecord) -> None:
        self.inner.observe(record)
        self.tracer.observed(record)

    def render(self) -> tuple[bytes, str]:
        return self.inner.render()

    def __getattr__(self, name: str) -> Any:  # set_circuit_state and whatever else the sink offers
        return getattr(self.inner, name)


class TraceMiddleware:
    """Outermost ASGI middleware: a server span per ``/v1`` request, its calls as children."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, tracer: Tracer) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        start_ns = time.time_ns()
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", [])
                   if name in (b"traceparent", b"tracestate")}
        seen: dict[str, Any] = {"status": 500, "request_id": None}

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name == _REQUEST_ID_HEADER:
                        seen["request_id"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            request_id = seen["request_id"]
            record = self.tracer.pending.pop(request_id, None) if request_id else None
            state = getattr(self.fastapi_app.state, "gateway", None)
            providers = {name: config.type for name, config in state.runtime.policy.backends.items()} if state else {}
            self.tracer.emit(carrier, str(scope.get("method", "")), path, int(seen["status"]), start_ns,
                             time.time_ns(), record, providers)


def install_tracing(app: FastAPI, settings: TracingSettings) -> Tracer:
    tracer = Tracer(settings)
    app.add_middleware(TraceMiddleware, fastapi_app=app, tracer=tracer)
    return tracer
