"""The proof that one trace survives aiokafka -> Faust agent -> aiokafka on a real broker."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from cocoon.core.faust_support import create_app, start_app, stop_app
from cocoon.core.telemetry import consume_span, install_memory_exporter, traced_send


def _create_topics(bootstrap: str, *names: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1) for name in names])
    finally:
        admin.close()


async def _read_one(bootstrap: str, topic: str, group: str, timeout_s: float) -> object:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    with consume_span(record, group=group):
                        return record
        raise AssertionError(f"nothing arrived on {topic} within {timeout_s}s")
    finally:
        await consumer.stop()


def _by_name(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    matching = [span for span in spans if span.name == name]
    assert len(matching) == 1, f"expected one span {name!r}, got {[s.name for s in spans]}"
    return matching[0]


def _assert_child(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.parent is not None, f"{child.name} has no parent"
    assert child.parent.span_id == parent.context.span_id, (
        f"{child.name} is not a child of {parent.name}"
    )


async def test_one_trace_through_a_faust_agent(kafka_bootstrap, unique_name):
    exporter = install_memory_exporter()
    source, sink = unique_name("trace.in"), unique_name("trace.out")
    _create_topics(kafka_bootstrap, source, sink)

    app = create_app(
        unique_name("trace-app"), kafka_bootstrap, session_timeout=6.0, heartbeat_interval=2.0
    )
    in_topic = app.topic(source, value_serializer="raw", key_serializer="raw")
    out_topic = app.topic(sink, value_serializer="raw", key_serializer="raw")

    @app.agent(in_topic)
    async def shout(stream):
        async for event in stream.events():
            await out_topic.send(key=event.key, value=event.value.upper())

    await start_app(app)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        with trace.get_tracer("test").start_as_current_span("request") as root:
            await traced_send(producer, source, b"hello", key=b"r-1")
        record = await asyncio.wait_for(
            _read_one(kafka_bootstrap, sink, unique_name("final"), 35.0), 40.0
        )
    finally:
        await producer.stop()
        await stop_app(app)

    assert record.value == b"HELLO"
    # The faust agent sent exactly one traceparent: no duplicate injection.
    assert [key for key, _ in record.headers].count("traceparent") == 1

    trace_id = root.get_span_context().trace_id
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
    request = _by_name(spans, "request")
    first_send = _by_name(spans, f"{source} send")
    agent = _by_name(spans, f"{source} process")
    second_send = _by_name(spans, f"{sink} send")
    final = _by_name(spans, f"{sink} process")
    assert len(spans) == 5, [s.name for s in spans]

    _assert_child(first_send, request)
    _assert_child(agent, first_send)
    _assert_child(second_send, agent)
    _assert_child(final, second_send)
    assert (first_send.kind, agent.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert (second_send.kind, final.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert second_send.attributes["messaging.destination.name"] == sink
    assert second_send.attributes["messaging.kafka.message.offset"] == 0
    assert agent.attributes["messaging.kafka.message.key"] == "r-1"
