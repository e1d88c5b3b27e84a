"""Every byte a network put on the bus: keys, values and headers of every record of its topics."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from cocoon.core.bus.security import aiokafka_security, kafka_python_security


async def every_record(bootstrap: str, prefix: str) -> list[bytes]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_python_security())
    try:
        topics = [t for t in admin.list_topics() if t.startswith(prefix)]
    finally:
        admin.close()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_uncommitted",
        enable_auto_commit=False,
        **aiokafka_security(),
    )
    await consumer.start()
    blobs: list[bytes] = []
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in consumer.partitions_for_topic(topic) or ()
        ]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p)
                for topic in topics
                for p in consumer.partitions_for_topic(topic) or ()
            ]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp, end in ends.items() if end > 0}
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    blobs += [record.key or b"", record.value or b""]
                    blobs += [bytes(value) for _, value in record.headers]
            # Every partition, not only those that returned records: one whose log ends in a
            # transaction marker moves past it with an empty fetch.
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        assert not remaining, f"could not read to the end of {remaining}"
    finally:
        await consumer.stop()
    assert len(topics) > 20
    return blobs
