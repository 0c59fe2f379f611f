"""Telemetry of a liveml process: OpenTelemetry traces (the metrics endpoint is `metrics_server`).

Traces go to an OTLP collector when one is configured; a test can pass its own
span exporter instead. gRPC calls are traced by OpenTelemetry's grpc
instrumentation, so a caller's trace context in the metadata makes our spans its
children and one request is one trace across gateway and worker.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

log = logging.getLogger(__name__)

_lock = threading.Lock()
_provider: TracerProvider | None = None
_exporting = False


def tracing_enabled() -> bool:
    """Whether spans go anywhere; when not, the request path skips making them."""
    return _exporting


def setup_tracing(
    service_name: str,
    otlp_endpoint: str | None = None,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """Install the process-wide tracer provider (once; later calls add exporters)."""
    global _provider, _exporting
    with _lock:
        if _provider is None:
            _provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
            trace.set_tracer_provider(_provider)
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            _provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True))
            )
            log.info("exporting traces to %s", otlp_endpoint)
            _exporting = True
        if exporter is not None:
            _provider.add_span_processor(SimpleSpanProcessor(exporter))
            _exporting = True
        return _provider


def record_span(name: str, start: float, end: float, **attributes: Any) -> None:
    """A finished span from perf_counter() timestamps, child of the current span."""
    offset = time.time_ns() - int(time.perf_counter() * 1e9)
    span = trace.get_tracer("liveml").start_span(
        name, start_time=offset + int(start * 1e9), attributes=attributes
    )
    span.end(end_time=offset + int(end * 1e9))


def tracing_interceptor() -> Any:
    """Server interceptor that opens a span per RPC, child of the caller's trace."""
    return aio_server_interceptor()  # type: ignore[no-untyped-call]
