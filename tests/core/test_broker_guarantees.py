"""The broker really provides what billing and the registry rely on: transactions and compaction."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from cocoon.core.bus.security import aiokafka_security, kafka_python_security


def _create_topic(bootstrap: str, name: str, **config: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_python_security())
    try:
        admin.create_topics([NewTopic(name, 1, 1, topic_configs=config)])
    finally:
        admin.close()


async def _read_all(bootstrap: str, topic: str, *, isolation: str, expect: int, timeout_s=15):
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level=isolation,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        **aiokafka_security(),
    )
    await consumer.start()
    records = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            records.extend(r for rs in batch.values() for r in rs)
        # Give the consumer a moment to prove nothing else arrives.
        batch = await consumer.getmany(timeout_ms=500)
        records.extend(r for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()
    return records


async def test_read_committed_consumer_never_sees_aborted_records(kafka_bootstrap, unique_name):
    topic = unique_name("tx")
    _create_topic(kafka_bootstrap, topic)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        transactional_id=unique_name("txid"),
        **aiokafka_security(),
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send(topic, b"committed-1")
        await producer.begin_transaction()
        await producer.send(topic, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"committed-2")
    finally:
        await producer.stop()

    committed = await _read_all(kafka_bootstrap, topic, isolation="read_committed", expect=2)
    assert [r.value for r in committed] == [b"committed-1", b"committed-2"]
    # The aborted record is physically in the log: a read_uncommitted reader sees it.
    uncommitted = await _read_all(kafka_bootstrap, topic, isolation="read_uncommitted", expect=3)
    assert b"aborted" in [r.value for r in uncommitted]


async def test_log_compaction_keeps_only_the_latest_value_per_key(kafka_bootstrap, unique_name):
    topic = unique_name("compact")
    _create_topic(
        kafka_bootstrap,
        topic,
        **{
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": "100",
            "min.compaction.lag.ms": "0",
        },
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, **aiokafka_security())
    await producer.start()
    try:
        for version in range(5):
            await producer.send_and_wait(topic, f"v{version}".encode(), key=b"worker-a")
            await producer.send_and_wait(topic, f"v{version}".encode(), key=b"worker-b")
        await producer.send_and_wait(topic, None, key=b"worker-b")  # tombstone
        deadline = time.monotonic() + 60
        survivors: list = []
        while time.monotonic() < deadline:
            # Roll the active segment so the cleaner may compact what came before.
            await asyncio.sleep(1.0)
            await producer.send_and_wait(topic, b"tick", key=b"ticker")
            survivors = await _read_all(
                kafka_bootstrap, topic, isolation="read_committed", expect=0
            )
            keys = [r.key for r in survivors if r.key != b"ticker"]
            if keys == [b"worker-a"]:
                break
    finally:
        await producer.stop()
    latest = {r.key: r.value for r in survivors if r.key != b"ticker"}
    keys_in_log = [r.key for r in survivors if r.key != b"ticker"]
    assert latest == {b"worker-a": b"v4"}
    assert keys_in_log.count(b"worker-a") == 1, "older values of worker-a were not compacted away"
