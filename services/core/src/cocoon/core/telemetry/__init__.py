"""OpenTelemetry set-up and W3C trace-context propagation through Kafka headers."""

from cocoon.core.telemetry.messaging import (
    consume_span,
    mark_failed,
    message_attributes,
    produce_span,
    record_sent,
    traced_send,
)
from cocoon.core.telemetry.propagation import extract_context, inject_headers
from cocoon.core.telemetry.tracing import install_memory_exporter, setup_tracing, shutdown_tracing

__all__ = [
    "consume_span",
    "extract_context",
    "inject_headers",
    "install_memory_exporter",
    "mark_failed",
    "message_attributes",
    "produce_span",
    "record_sent",
    "setup_tracing",
    "shutdown_tracing",
    "traced_send",
]
