"""Spans around bus sends and handling, with the trace context carried in record headers.

Attribute names follow the OpenTelemetry messaging conventions. The context crosses Kafka through
`cocoon.core.telemetry.propagation`, the one place that maps it to and from headers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from cocoon.core.telemetry.propagation import extract_context

_TRACER = "cocoon.bus"


def _attributes(topic: str, operation: str, key: str | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.name": operation,
    }
    if key is not None:
        attributes["messaging.kafka.message.key"] = key
    return attributes


@contextlib.contextmanager
def send_span(topic: str, key: str | None) -> Iterator[Span]:
    """A PRODUCER span, current inside the block so `inject_headers()` carries it."""
    with trace.get_tracer(_TRACER).start_as_current_span(
        f"{topic} send", kind=SpanKind.PRODUCER, attributes=_attributes(topic, "send", key)
    ) as span:
        yield span


@contextlib.contextmanager
def process_span(
    topic: str, partition: int, offset: int, key: str | None, headers: Any, group: str | None
) -> Iterator[Span]:
    """A CONSUMER span parented to the producer's context from the record's headers."""
    attributes = _attributes(topic, "process", key)
    attributes["messaging.destination.partition.id"] = str(partition)
    attributes["messaging.kafka.message.offset"] = offset
    if group:
        attributes["messaging.consumer.group.name"] = group
    with trace.get_tracer(_TRACER).start_as_current_span(
        f"{topic} process",
        context=extract_context(headers),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        yield span


def mark_failed(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(exc)))
