"""A real service process under the runtime: health, /metrics, SIGTERM drains and commits.

The relay service below exists for these tests only; the subprocess loads it with
`python -m cocoon.core.runtime test_runtime_process:build`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from opentelemetry import trace

from cocoon.core.bus.security import aiokafka_security, kafka_python_security
from cocoon.core.runtime import Service, ServiceSettings
from cocoon.core.runtime.health import check_health
from cocoon.core.runtime.metrics import IN_FLIGHT, MESSAGES
from cocoon.core.telemetry import consume_span, install_memory_exporter, traced_send

log = logging.getLogger("relay")


class RelaySettings(ServiceSettings):
    relay_input: str
    relay_output: str
    relay_group: str
    relay_work_seconds: float = 0.0


Settings = RelaySettings


class Relay(Service):
    """Copies records from one topic to another, one at a time, committing after each."""

    name = "relay"

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.consumer = AIOKafkaConsumer(
            settings.relay_input,
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.relay_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=2000,
            fetch_max_wait_ms=100,
            **aiokafka_security(),
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, **aiokafka_security()
        )

    async def start(self) -> None:
        await self.consumer.start()
        await self.producer.start()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            batch = await self.consumer.getmany(timeout_ms=200, max_records=1)
            for tp, records in batch.items():
                for record in records:
                    await self._relay(record)
                    await self.consumer.commit({tp: record.offset + 1})

    async def _relay(self, record: ConsumerRecord) -> None:
        with consume_span(record, group=self.settings.relay_group):
            IN_FLIGHT.labels(self.name).inc()
            log.info("relaying", extra={"offset": record.offset})
            await asyncio.sleep(self.settings.relay_work_seconds)
            await traced_send(self.producer, self.settings.relay_output, record.value, record.key)
            IN_FLIGHT.labels(self.name).dec()
            MESSAGES.labels(self.name, record.topic, "ok").inc()
            log.info("relayed", extra={"offset": record.offset})

    async def close(self) -> None:
        await self.consumer.stop()
        await self.producer.stop()


def build(settings: RelaySettings) -> Relay:
    return Relay(settings)


# ---------------------------------------------------------------- the tests


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _create_topics(bootstrap: str, *names: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_python_security())
    try:
        admin.create_topics([NewTopic(name, 1, 1) for name in names])
    finally:
        admin.close()


def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_python_security())
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    found = offsets.get(KafkaTopicPartition(topic, 0))
    return found.offset if found is not None else None


class RelayProcess:
    """The relay in a subprocess, with its JSON log lines collected as they arrive."""

    def __init__(
        self,
        bootstrap: str,
        names: dict[str, str],
        work_s: float,
        grace_s: float,
        target: str = "test_runtime_process:build",
    ):
        self.target = target
        self.health_port, self.metrics_port = _free_port(), _free_port()
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path]),
            "COCOON_KAFKA_BOOTSTRAP": bootstrap,
            "COCOON_GRPC_HEALTH_PORT": str(self.health_port),
            "COCOON_METRICS_PORT": str(self.metrics_port),
            "COCOON_SHUTDOWN_GRACE_SECONDS": str(grace_s),
            "COCOON_RELAY_INPUT": names["input"],
            "COCOON_RELAY_OUTPUT": names["output"],
            "COCOON_RELAY_GROUP": names["group"],
            "COCOON_RELAY_WORK_SECONDS": str(work_s),
        }
        self.env.pop("COCOON_CONFIG_FILE", None)
        self.logs: list[dict] = []
        self.raw: list[str] = []

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cocoon.core.runtime",
            self.target,
            env=self.env,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            text = line.decode().rstrip()
            self.raw.append(text)
            with contextlib.suppress(json.JSONDecodeError):
                self.logs.append(json.loads(text))

    async def wait_log(self, message: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for entry in self.logs:
                if entry.get("message") == message:
                    return entry
            assert self.proc.returncode is None, "\n".join(self.raw)
            await asyncio.sleep(0.05)
        raise AssertionError(f"no log {message!r} in {timeout_s}s:\n" + "\n".join(self.raw))

    async def wait_health(self, wanted: str, timeout_s: float) -> None:
        deadline, status = time.monotonic() + timeout_s, "unreachable"
        while time.monotonic() < deadline:
            try:
                status = await check_health(f"127.0.0.1:{self.health_port}", "relay", 1.0)
            except Exception as exc:
                status = f"unreachable ({exc!r})"
            if status == wanted:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"health {status}, wanted {wanted}:\n" + "\n".join(self.raw))

    async def wait_exit(self, timeout_s: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await self._reader
        return code

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def _produce_traced(bootstrap: str, topic: str) -> int:
    install_memory_exporter()  # a recording provider, so the span has a real trace id
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **aiokafka_security())
    await producer.start()
    try:
        with trace.get_tracer("test").start_as_current_span("client") as span:
            await traced_send(producer, topic, b"payload", key=b"k-1")
        return span.get_span_context().trace_id
    finally:
        await producer.stop()


async def _read_output(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        **aiokafka_security(),
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=3000)
        return [record for records in batch.values() for record in records]
    finally:
        await consumer.stop()


def _names(unique_name) -> dict[str, str]:
    return {key: unique_name(f"relay.{key}") for key in ("input", "output", "group")}


async def test_sigterm_finishes_in_flight_work_commits_and_exits_0(kafka_bootstrap, unique_name):
    names = _names(unique_name)
    _create_topics(kafka_bootstrap, names["input"], names["output"])
    trace_id = await _produce_traced(kafka_bootstrap, names["input"])
    relay = RelayProcess(kafka_bootstrap, names, work_s=2.0, grace_s=8.0)
    await relay.start()
    try:
        await relay.wait_health("SERVING", 20)
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"http://127.0.0.1:{relay.metrics_port}/metrics")
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain")
        assert 'cocoon_service_ready{service="relay"} 1.0' in reply.text

        relaying = await relay.wait_log("relaying", 25)
        relay.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await relay.wait_health("NOT_SERVING", 1.5)
        code = await relay.wait_exit(10)
        took = time.monotonic() - signalled
    finally:
        relay.kill()

    assert code == 0, "\n".join(relay.raw)
    assert took < 8.0
    assert any(entry["message"] == "relayed" for entry in relay.logs)
    assert relaying["trace_id"] == format(trace_id, "032x")
    assert relaying["service"] == "relay" and relaying["span_id"]
    assert _committed(kafka_bootstrap, names["group"], names["input"]) == 1
    [relayed] = await _read_output(kafka_bootstrap, names["output"])
    assert relayed.value == b"payload"
    traceparent = dict(relayed.headers)["traceparent"].decode()
    assert traceparent.split("-")[1] == format(trace_id, "032x")


async def test_work_past_the_grace_period_is_handed_back(kafka_bootstrap, unique_name):
    names = _names(unique_name)
    _create_topics(kafka_bootstrap, names["input"], names["output"])
    await _produce_traced(kafka_bootstrap, names["input"])
    relay = RelayProcess(kafka_bootstrap, names, work_s=60.0, grace_s=1.0)
    await relay.start()
    try:
        await relay.wait_log("relaying", 25)
        relay.proc.send_signal(signal.SIGTERM)
        code = await relay.wait_exit(8)
    finally:
        relay.kill()

    assert code == 3, "\n".join(relay.raw)
    assert not any(entry["message"] == "relayed" for entry in relay.logs)
    # Nothing committed: the record will be redelivered to the next member of the group.
    assert _committed(kafka_bootstrap, names["group"], names["input"]) is None
