"""Producer and consumer loop against the real broker: codec, keys, trace context, commits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

import pytest
from aiokafka import TopicPartition
from opentelemetry import context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from cocoon.core import codec
from cocoon.core.bus import BusConsumer, BusProducer, ConsumerSettings, Message
from cocoon.core.bus.admin import apply_topics
from cocoon.core.catalog import dead_letter_spec, load_catalog
from cocoon.core.codec import models

CATALOG = load_catalog()
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def heartbeat(worker_id: str = "w-1", seq: int = 1) -> models.Heartbeat:
    return models.Heartbeat(
        worker_id=worker_id,
        models=["m"],
        state="READY",
        max_active_requests=4,
        active_requests=0,
        coefficient=1000,
        work_topic=f"work.{worker_id}",
        seq=seq,
        sent_at=NOW,
    )


def provision(bootstrap: str, prefix: str, *names: str) -> None:
    specs = [CATALOG[n] for n in names]
    apply_topics(bootstrap, specs + [dead_letter_spec(s) for s in specs], prefix=prefix)


async def consume_until(consumer: BusConsumer, predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out; stats: {consumer.stats}"
        await consumer.poll_once()


def test_low_latency_settings_are_explicit():
    assert ConsumerSettings().kwargs()["fetch_min_bytes"] == 1  # answer at the first record
    assert ConsumerSettings().kwargs()["enable_auto_commit"] is False
    from cocoon.core.bus import ProducerSettings

    assert ProducerSettings().linger_ms <= 5


async def test_a_waiting_fetch_is_answered_when_a_record_lands_not_when_the_wait_ends(
    kafka_bootstrap, unique_name
):
    # The bus's fetch wait (500 ms) is the idle consumer's polling interval, not a delay: the
    # broker answers a read_committed fetch as soon as a record lands. Shown with a 5 s wait:
    # a record sent at a random point of a waiting fetch would otherwise wait 2.5 s at median.
    prefix = unique_name("wait") + "."
    provision(kafka_bootstrap, prefix, "worker.heartbeats")
    arrived: dict[int, float] = {}

    async def handler(message: Message) -> None:
        arrived[message.value.seq] = time.monotonic()

    settings = ConsumerSettings(fetch_max_wait_ms=5000)
    assert settings.isolation_level == "read_committed"
    consumer = BusConsumer(
        kafka_bootstrap,
        ["worker.heartbeats"],
        group_id=unique_name("g"),
        handler=handler,
        prefix=prefix,
        settings=settings,
    )
    async with BusProducer(kafka_bootstrap, prefix=prefix) as producer, consumer:
        running = asyncio.create_task(consumer.run())
        try:
            await producer.send("worker.heartbeats", heartbeat(seq=0))  # joins the group
            deadline = time.monotonic() + 60
            while 0 not in arrived:
                assert time.monotonic() < deadline, "the consumer never joined"
                await asyncio.sleep(0.05)
            delays = []
            for seq in range(1, 6):
                await asyncio.sleep(0.5 * seq)  # the record lands inside a waiting fetch
                sent = time.monotonic()
                await producer.send("worker.heartbeats", heartbeat(seq=seq))
                while seq not in arrived:
                    assert time.monotonic() < sent + 10, f"record {seq} never arrived"
                    await asyncio.sleep(0.005)
                delays.append(arrived[seq] - sent)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    assert sorted(delays)[2] < 1.0, f"records waited for the fetch wait: {delays}"


async def test_send_and_consume_with_key_trace_and_commit(kafka_bootstrap, unique_name):
    prefix = unique_name("bus") + "."
    provision(kafka_bootstrap, prefix, "worker.heartbeats")
    received: list[tuple[Message, int]] = []

    async def handler(message: Message) -> None:
        received.append((message, trace.get_current_span().get_span_context().trace_id))

    parent = SpanContext(
        trace_id=0xC0C0, span_id=0xBEEF, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    async with BusProducer(kafka_bootstrap, prefix=prefix) as producer:
        token = context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
        try:
            meta = await producer.send("worker.heartbeats", heartbeat("w-7", seq=3))
        finally:
            context.detach(token)
        # A dict works too, and the key always comes from the catalog's key field.
        await producer.send("worker.heartbeats", heartbeat("w-7", seq=4).to_avro())
        with pytest.raises(codec.EncodeError, match="keyed by worker_id"):
            await producer.send("worker.heartbeats", heartbeat("w-7"), key="other")
        with pytest.raises(codec.EncodeError, match=r"carries cocoon\.worker\.Heartbeat"):
            await producer.send(
                "worker.heartbeats",
                models.Balance(
                    account_id="a",
                    account_kind="CLIENT",
                    available_nanoton=0,
                    held_nanoton=0,
                    last_entry_id="e",
                    entries_applied=0,
                    updated_at=NOW,
                ),
            )

    group = unique_name("g")
    consumer = BusConsumer(
        kafka_bootstrap, ["worker.heartbeats"], group_id=group, handler=handler, prefix=prefix
    )
    async with consumer:
        await consume_until(consumer, lambda: len(received) == 2)
        first, trace_id = received[0]
        assert first.topic == "worker.heartbeats" and first.key == "w-7"
        assert first.record == "cocoon.worker.Heartbeat"
        assert isinstance(first.value, models.Heartbeat) and first.value.seq == 3
        assert first.data["seq"] == 3
        assert (first.partition, first.offset) == (meta.partition, meta.offset)
        assert trace_id == 0xC0C0, "the handler runs inside the producer's trace"
        assert received[1][0].partition == first.partition, "same key, same partition"
        tp = TopicPartition(prefix + "worker.heartbeats", first.partition)
        assert await consumer.kafka.committed(tp) == received[1][0].offset + 1
        assert consumer.stats.handled == 2 and consumer.stats.dead_lettered == 0


async def test_a_failing_handler_commits_nothing_past_the_failure_and_retries(
    kafka_bootstrap, unique_name
):
    prefix = unique_name("bus") + "."
    provision(kafka_bootstrap, prefix, "worker.heartbeats")
    async with BusProducer(kafka_bootstrap, prefix=prefix) as producer:
        for seq in range(3):
            await producer.send("worker.heartbeats", heartbeat("w-1", seq), partition=0)
    seen: list[int] = []
    fail_once = {1}

    async def handler(message: Message) -> None:
        if message.value.seq in fail_once:
            fail_once.clear()
            raise RuntimeError("database briefly down")
        seen.append(message.value.seq)

    consumer = BusConsumer(
        kafka_bootstrap,
        ["worker.heartbeats"],
        group_id=unique_name("g"),
        handler=handler,
        prefix=prefix,
    )
    tp = TopicPartition(prefix + "worker.heartbeats", 0)
    async with consumer:
        with pytest.raises(RuntimeError, match="briefly down"):
            await consume_until(consumer, lambda: len(seen) == 3)
        assert seen == [0]
        assert await consumer.kafka.committed(tp) == 1, "only the handled record is committed"
        await consume_until(consumer, lambda: len(seen) == 3)
        assert seen == [0, 1, 2]
        assert await consumer.kafka.committed(tp) == 3


async def test_a_batch_over_partitions_commits_what_was_handled_before_a_failure(
    kafka_bootstrap, unique_name
):
    # Two records in each of two partitions; the handler fails once on the fourth record,
    # whichever partition it is in. Everything handled before it, in both partitions, is
    # committed (the batch commits in one request, at its end or at the failure); nothing
    # after it is, and the retry handles each record left exactly once.
    prefix = unique_name("bus") + "."
    provision(kafka_bootstrap, prefix, "worker.heartbeats")
    async with BusProducer(kafka_bootstrap, prefix=prefix) as producer:
        for partition, seqs in ((0, (0, 1)), (1, (10, 11))):
            for seq in seqs:
                await producer.send("worker.heartbeats", heartbeat("w-1", seq), partition=partition)
    seen: list[int] = []
    failed: list[int] = []

    async def handler(message: Message) -> None:
        if len(seen) == 3 and not failed:
            failed.append(message.value.seq)
            raise RuntimeError("database briefly down")
        seen.append(message.value.seq)

    consumer = BusConsumer(
        kafka_bootstrap,
        ["worker.heartbeats"],
        group_id=unique_name("g"),
        handler=handler,
        prefix=prefix,
    )
    partitions = {
        TopicPartition(prefix + "worker.heartbeats", 0): {0, 1},
        TopicPartition(prefix + "worker.heartbeats", 1): {10, 11},
    }
    async with consumer:
        with pytest.raises(RuntimeError, match="briefly down"):
            await consume_until(consumer, lambda: len(seen) == 4)
        assert len(seen) == 3
        for tp, seqs in partitions.items():
            handled = len(seqs.intersection(seen))
            assert (await consumer.kafka.committed(tp) or 0) == handled, (tp, seen, failed)
        await consume_until(consumer, lambda: len(seen) == 4)
        assert sorted(seen) == [0, 1, 10, 11], "each record handled once"
        for tp in partitions:
            assert await consumer.kafka.committed(tp) == 2


async def test_run_stops_cleanly(kafka_bootstrap, unique_name):
    prefix = unique_name("bus") + "."
    provision(kafka_bootstrap, prefix, "worker.heartbeats")
    got = asyncio.Event()

    async def handler(message: Message) -> None:
        got.set()

    consumer = BusConsumer(
        kafka_bootstrap,
        ["worker.heartbeats"],
        group_id=unique_name("g"),
        handler=handler,
        prefix=prefix,
    )
    await consumer.start()
    runner = asyncio.create_task(consumer.run())
    async with BusProducer(kafka_bootstrap, prefix=prefix) as producer:
        await producer.send("worker.heartbeats", heartbeat())
    await asyncio.wait_for(got.wait(), 20)
    await asyncio.wait_for(consumer.stop(), 10)
    await asyncio.wait_for(runner, 5)
