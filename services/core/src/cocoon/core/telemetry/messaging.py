"""Spans around Kafka produce and consume with aiokafka, following the messaging conventions.

A produce span is the parent of whatever consumes the record: its context travels in the
record's `traceparent` header (see propagation.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, RecordMetadata
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from cocoon.core.telemetry.propagation import Headers, extract_context, inject_headers

TRACER_NAME = "cocoon.kafka"


_cached: tuple[object, trace.Tracer] | None = None


def _tracer() -> trace.Tracer:
    # Cached per provider: the provider may be installed after this module is imported, and
    # `get_tracer` costs tens of microseconds, paid on every record otherwise.
    global _cached
    provider = trace.get_tracer_provider()
    if _cached is None or _cached[0] is not provider:
        _cached = (provider, trace.get_tracer(TRACER_NAME))
    return _cached[1]


def _key_attribute(key: Any) -> str | None:
    if key is None:
        return None
    return key.decode("utf-8", "replace") if isinstance(key, bytes | bytearray) else str(key)


def message_attributes(topic: str, operation: str, key: Any = None) -> dict[str, Any]:
    """OpenTelemetry messaging semantic attributes for one Kafka record."""
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
    }
    text_key = _key_attribute(key)
    if text_key is not None:
        # The spec says this must not be set for a null key.
        attributes["messaging.kafka.message.key"] = text_key
    return attributes


@contextlib.contextmanager
def produce_span(topic: str, key: Any = None, headers: Headers | None = None) -> Iterator[Span]:
    """A PRODUCER span; inject its context with `inject_headers(headers)` inside the block."""
    with _tracer().start_as_current_span(
        f"{topic} send", kind=SpanKind.PRODUCER, attributes=message_attributes(topic, "send", key)
    ) as span:
        yield span


def record_sent(span: Span, metadata: RecordMetadata) -> None:
    """Add where the record landed to a produce span."""
    span.set_attribute("messaging.destination.partition.id", str(metadata.partition))
    span.set_attribute("messaging.kafka.message.offset", metadata.offset)


async def traced_send(
    producer: AIOKafkaProducer,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    headers: Headers | None = None,
    partition: int | None = None,
) -> RecordMetadata:
    """Send one record and wait for the broker's ack, inside a PRODUCER span whose context
    goes into the record's headers."""
    with produce_span(topic, key) as span:
        metadata = await producer.send_and_wait(
            topic, value, key=key, partition=partition, headers=inject_headers(headers)
        )
        record_sent(span, metadata)
        return metadata


@contextlib.contextmanager
def consume_span(
    record: ConsumerRecord, *, group: str | None = None, operation: str = "process"
) -> Iterator[Span]:
    """A CONSUMER span for handling `record`, parented to the span that produced it.

    It is the current span inside the block, so logs and produces nest under it. An exception
    escaping the block marks the span as failed and is re-raised.
    """
    attributes = message_attributes(record.topic, operation, record.key)
    attributes["messaging.destination.partition.id"] = str(record.partition)
    attributes["messaging.kafka.message.offset"] = record.offset
    if group:
        attributes["messaging.consumer.group.name"] = group
    with _tracer().start_as_current_span(
        f"{record.topic} {operation}",
        context=extract_context(record.headers),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        yield span


def mark_failed(span: Span, exc: BaseException) -> None:
    """Record a handled failure (e.g. a record sent to a dead-letter topic) on a span."""
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(exc)))
