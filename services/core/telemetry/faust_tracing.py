"""Trace context through Faust agents.

Consume side: faust-streaming 0.15.3 ships `faust.contrib.opentelemetry`, whose sensor opens a
`{topic} process` span per event, parented to the record's `traceparent` and current while the
agent handles the event. Produce side: that module expects the aiokafka instrumentation to
inject headers; Cocoon does not patch aiokafka globally (the bus injects explicitly), so
`SendTracingSensor` opens the PRODUCER span and writes `traceparent` into the outgoing message.

Limit: `Topic.send_soon()` publishes from Faust's producer-buffer task, where the agent's span is
not current; such sends start a new trace. Agents should `await topic.send(...)`.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.contrib.opentelemetry import setup_opentelemetry
from faust.sensors.base import Sensor
from faust.sensors.distributed_tracing import TracingSensor
from faust.types import PendingMessage, ProducerT, RecordMetadata
from opentelemetry.trace import Span

from cocoon.core.telemetry.messaging import _tracer, mark_failed, message_attributes, record_sent
from cocoon.core.telemetry.propagation import inject_headers


def _inject_in_place(headers: Any, span: Span) -> None:
    """Faust reads `message.headers` before calling sensors and sends that very object, so
    adding the trace context to it here reaches the wire."""
    from opentelemetry import trace

    trace_headers = inject_headers([], trace.set_span_in_context(span))
    if isinstance(headers, dict):
        for key, value in trace_headers:
            headers[key] = value
    elif isinstance(headers, list):
        names = {key for key, _ in trace_headers}
        headers[:] = [item for item in headers if item[0] not in names] + trace_headers


class SendTracingSensor(Sensor):
    """A PRODUCER span for every record a Faust app sends, parented to the current span."""

    def on_send_initiated(
        self,
        producer: ProducerT,
        topic: str,
        message: PendingMessage,
        keysize: int,
        valsize: int,
    ) -> Any:
        from opentelemetry.trace import SpanKind

        span = _tracer().start_span(
            f"{topic} send",
            kind=SpanKind.PRODUCER,
            attributes=message_attributes(topic, "send", message.key),
        )
        _inject_in_place(message.headers, span)
        return span

    def on_send_completed(self, producer: ProducerT, state: Any, metadata: RecordMetadata) -> None:
        if isinstance(state, Span):
            record_sent(state, metadata)  # type: ignore[arg-type]
            state.end()

    def on_send_error(self, producer: ProducerT, exc: BaseException, state: Any) -> None:
        if isinstance(state, Span):
            mark_failed(state, exc)
            state.end()


def instrument_faust_app(app: faust.App) -> None:
    """Trace every event an agent of `app` processes and every record it sends.

    Refuses an app that already has Faust's opentracing sensor: both would write
    `traceparent` and the trace would fork.
    """
    if any(isinstance(sensor, TracingSensor) for sensor in app.sensors):
        raise ValueError(
            "this Faust app has the opentracing TracingSensor; remove it before "
            "enabling OpenTelemetry (both inject trace headers)"
        )
    if any(isinstance(sensor, SendTracingSensor) for sensor in app.sensors):
        return
    setup_opentelemetry(app)
    app.sensors.add(SendTracingSensor())
