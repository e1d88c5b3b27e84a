"""One OpenTelemetry set-up for every service.

The global TracerProvider can only be set once per process (the API refuses to override it),
so `setup_tracing` installs it on the first call and only adds exporters on later calls.
"""

from __future__ import annotations

import logging
import os
import threading

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

log = logging.getLogger(__name__)

_lock = threading.Lock()
# Exporters already attached ("otlp:<endpoint>", "console"): a repeated set-up must not
# export every span twice.
_attached: set[str] = set()


def _installed_provider() -> TracerProvider | None:
    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, TracerProvider) else None


def setup_tracing(
    service_name: str,
    *,
    instance_id: str | None = None,
    otlp_endpoint: str | None = None,
    console: bool = False,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """Install (once) the process-wide TracerProvider for `service_name` and its exporters.

    OTLP export is on when `otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `console`
    (or `COCOON_TRACES_CONSOLE=1`) prints spans; `exporter` is exported to synchronously
    (tests pass an in-memory exporter).
    """
    with _lock:
        provider = _installed_provider()
        if provider is None:
            attributes = {"service.name": service_name, "service.namespace": "cocoon"}
            if instance_id:
                attributes["service.instance.id"] = instance_id
            provider = TracerProvider(resource=Resource.create(attributes))
            trace.set_tracer_provider(provider)
        elif provider.resource.attributes.get("service.name") != service_name:
            # Only possible when several services share one process (tests).
            log.debug("tracer provider already installed; keeping its service.name")
        endpoint = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if endpoint and f"otlp:{endpoint}" not in _attached:
            _attached.add(f"otlp:{endpoint}")
            # Imported lazily: the gRPC exporter is heavy and most tests never need it.
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        if (console or os.environ.get("COCOON_TRACES_CONSOLE") == "1") and (
            "console" not in _attached
        ):
            _attached.add("console")
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        return provider


def install_memory_exporter(service_name: str = "cocoon-test") -> InMemorySpanExporter:
    """A fresh in-memory exporter receiving every span ended from now on (for tests)."""
    exporter = InMemorySpanExporter()
    setup_tracing(service_name, exporter=exporter)
    return exporter


def shutdown_tracing() -> None:
    """Flush pending spans (OTLP batches) before the process exits."""
    provider = _installed_provider()
    if provider is not None:
        provider.force_flush(timeout_millis=5000)
        provider.shutdown()
