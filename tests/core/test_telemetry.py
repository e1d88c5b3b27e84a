"""Produce and consume spans with aiokafka on a real broker, and the tracing set-up."""

from __future__ import annotations

import asyncio
import os
import sys

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.trace import SpanKind, StatusCode

from cocoon.core.bus.security import aiokafka_security, kafka_python_security
from cocoon.core.telemetry import (
    consume_span,
    inject_headers,
    install_memory_exporter,
    traced_send,
)


async def test_consume_span_is_child_of_the_produce_span(kafka_bootstrap, unique_name):
    exporter = install_memory_exporter()
    topic, group = unique_name("spans"), unique_name("spans-group")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, **kafka_python_security())
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, **aiokafka_security())
    await producer.start()
    try:
        # Caller headers are kept; a stale traceparent is replaced, not duplicated.
        stale = [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]
        metadata = await traced_send(
            producer, topic, b"v", key=b"k", headers=[("tenant", b"t1"), *stale]
        )
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        **aiokafka_security(),
    )
    await consumer.start()
    try:
        record = await consumer.getone()
        with pytest.raises(RuntimeError), consume_span(record, group=group):
            raise RuntimeError("handler failed")
    finally:
        await consumer.stop()

    assert [key for key, _ in record.headers] == ["tenant", "traceparent"]
    spans = {span.name: span for span in exporter.get_finished_spans()}
    send, process = spans[f"{topic} send"], spans[f"{topic} process"]
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == send.context.trace_id != int("1" * 32, 16)
    assert process.parent.span_id == send.context.span_id
    assert send.attributes["messaging.kafka.message.offset"] == metadata.offset
    assert send.attributes["messaging.system"] == "kafka"
    assert process.attributes["messaging.consumer.group.name"] == group
    assert process.status.status_code is StatusCode.ERROR


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP/gRPC trace receiver, standing in for Tempo."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(self, request, context):
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


_EXPORTING_SERVICE = """
from opentelemetry import trace
from cocoon.core.telemetry import setup_tracing, shutdown_tracing
provider = setup_tracing("billing", instance_id="billing-3")
assert setup_tracing("other") is provider  # the first call names the process
with trace.get_tracer("t").start_as_current_span("settle"):
    pass
shutdown_tracing()
"""


async def test_spans_are_exported_over_otlp_when_the_endpoint_is_set():
    collector = _Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _EXPORTING_SERVICE, env=env, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(child.communicate(), 30)
        assert child.returncode == 0, stderr.decode()
    finally:
        await server.stop(0)

    [resource_spans] = [rs for request in collector.requests for rs in request.resource_spans]
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "billing"
    assert resource["service.instance.id"] == "billing-3"
    names = [span.name for scope in resource_spans.scope_spans for span in scope.spans]
    assert names == ["settle"]
    assert inject_headers([], None) == []  # no current span: nothing to propagate
