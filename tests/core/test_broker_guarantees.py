"""The broker really provides what billing and the registry rely on: transactions and compaction."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import ProducerFenced
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


# What several active billing instances can rely on (docs/billing-service.md, "Scaling out"):
# aiokafka 0.14 commits a transaction's input offsets by group id alone (no KIP-447 group
# metadata), so the group does not fence an instance that lost a partition; a transactional id
# per partition does.


async def _owner(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    """A member of `group` that has been assigned `topic`'s partition."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **aiokafka_security(),
    )
    await consumer.start()
    deadline = time.monotonic() + 30
    while not consumer.assignment():
        assert time.monotonic() < deadline, "no partition assigned"
        await consumer.getmany(timeout_ms=200)
    return consumer


async def _transaction(producer: AIOKafkaProducer, out: str, value: bytes, offsets, group: str):
    await producer.begin_transaction()
    await producer.send(out, value)
    await producer.send_offsets_to_transaction(offsets, group)
    await producer.commit_transaction()


async def test_the_group_does_not_fence_a_transaction_from_outside_it(kafka_bootstrap, unique_name):
    """A producer that is no member of the group (an instance that lost the partition) still
    commits output and the partition's offset: the group is no fence."""
    source, out, group = unique_name("in"), unique_name("out"), unique_name("group")
    _create_topic(kafka_bootstrap, source)
    _create_topic(kafka_bootstrap, out)
    owner = await _owner(kafka_bootstrap, source, group)
    zombie = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        transactional_id=unique_name("zombie"),
        **aiokafka_security(),
    )
    await zombie.start()
    try:
        partition = TopicPartition(source, 0)
        await _transaction(zombie, out, b"from the zombie", {partition: 7}, group)
        # The offset is the transaction's: visible once the coordinator has written its marker.
        for _ in range(75):  # up to 15 s
            if (seen := await owner.committed(partition)) == 7:
                break
            await asyncio.sleep(0.2)
        assert seen == 7
    finally:
        await zombie.stop()
        await owner.stop()
    committed = await _read_all(kafka_bootstrap, out, isolation="read_committed", expect=1)
    assert [r.value for r in committed] == [b"from the zombie"]


async def test_a_partitions_transactional_id_fences_its_previous_owner(
    kafka_bootstrap, unique_name
):
    """The new owner of a partition starts the partition's transactional producer: the old
    owner's open transaction is aborted and its commit refused, output and offsets alike."""
    source, out, group = unique_name("in"), unique_name("out"), unique_name("group")
    _create_topic(kafka_bootstrap, source)
    _create_topic(kafka_bootstrap, out)
    shard = unique_name("billing-p00")
    partition = TopicPartition(source, 0)

    def producer() -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, transactional_id=shard, **aiokafka_security()
        )

    old, new = producer(), producer()
    await old.start()
    try:
        await old.begin_transaction()
        await old.send(out, b"from the old owner")
        await old.send_offsets_to_transaction({partition: 7}, group)
        await new.start()  # init_transactions: fences `old`, aborts its open transaction
        with pytest.raises(ProducerFenced):
            await old.commit_transaction()
        await _transaction(new, out, b"from the new owner", {partition: 9}, group)
    finally:
        await new.stop()
        await old.stop()
    committed = await _read_all(kafka_bootstrap, out, isolation="read_committed", expect=1)
    assert [r.value for r in committed] == [b"from the new owner"]
    owner = await _owner(kafka_bootstrap, source, group)
    try:
        assert await owner.committed(partition) == 9
    finally:
        await owner.stop()


# Account shards: billing's instance that owns shard n must own partition n of every input
# topic (docs/billing-service.md, "Scaling out"). The range assignor deals each topic's
# partitions to the members in the same order, so co-partitioned topics come out alike.

INPUTS = 5  # inference.requests, .assignments, usage.receipts, inference.outcomes, billing.topups
SHARDS = 12


def _member(bootstrap: str, topics: list[str], group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        partition_assignment_strategy=(RangePartitionAssignor,),
        **aiokafka_security(),
    )


def _shards(member: AIOKafkaConsumer, topics: list[str]) -> set[int]:
    """The partition numbers `member` owns, checking it owns each on every topic."""
    by_topic = {t: {tp.partition for tp in member.assignment() if tp.topic == t} for t in topics}
    owned = by_topic[topics[0]]
    assert all(parts == owned for parts in by_topic.values()), by_topic
    return owned


async def _settled(members: list[AIOKafkaConsumer], topics: list[str]) -> list[set[int]]:
    """Poll until the members' shards cover every partition exactly once."""
    deadline = time.monotonic() + 60
    while True:
        await asyncio.gather(*(m.getmany(timeout_ms=100) for m in members))
        owned = [{tp.partition for tp in m.assignment() if tp.topic == topics[0]} for m in members]
        if sorted(p for parts in owned for p in parts) == list(range(SHARDS)):
            return [_shards(m, topics) for m in members]
        assert time.monotonic() < deadline, f"the group did not settle: {owned}"


async def test_the_range_assignor_gives_each_member_whole_shards(kafka_bootstrap, unique_name):
    """With 2, then 3, then 2 members again, every member owns the same partition numbers of
    every input topic, and together they own each shard once: ownership moves whole."""
    topics = [unique_name(f"input{i}") for i in range(INPUTS)]
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, **kafka_python_security())
    try:
        admin.create_topics([NewTopic(t, SHARDS, 1) for t in topics])
    finally:
        admin.close()
    group = unique_name("billing")
    members = [_member(kafka_bootstrap, topics, group) for _ in range(2)]
    await asyncio.gather(*(m.start() for m in members))
    try:
        two = await _settled(members, topics)
        assert sorted(map(len, two)) == [6, 6]
        members.append(_member(kafka_bootstrap, topics, group))
        await members[-1].start()
        three = await _settled(members, topics)
        assert sorted(map(len, three)) == [4, 4, 4]
        leaving = members.pop(0)
        await leaving.stop()
        again = await _settled(members, topics)
        assert sorted(map(len, again)) == [6, 6]
        # The leaver's shards moved whole to the members that stayed.
        assert three[0] <= again[0] | again[1]
    finally:
        await asyncio.gather(*(m.stop() for m in members))
