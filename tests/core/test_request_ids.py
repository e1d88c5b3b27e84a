"""Request ids co-partitioned with their account (billing's account shards, issue 13).

The helper must pick exactly the partition Kafka's clients pick: checked against Kafka's own
murmur2 vectors, aiokafka's producer and the Java producer, both sending to the real broker.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from kafka.admin import KafkaAdminClient, NewTopic

from cocoon.client import request_ids as client_ids
from cocoon.core.bus.security import KafkaSecurity, aiokafka_security, kafka_python_security
from cocoon.core.catalog import spec_for
from cocoon.core.kafka.broker import check_java, ensure_jars
from cocoon.core.request_ids import (
    SHARDED_TOPICS,
    account_partitions,
    account_shard,
    co_partitioned_id,
    is_co_partitioned,
    new_request_id,
)

ACCOUNTS = [f"client-{i}" for i in range(40)] + ["alice", "bob", "tg:123456789", ""]

# org.apache.kafka.common.utils.UtilsTest#testMurmur2: Java's signed results.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def test_aiokafka_and_the_client_hash_as_java_does():
    for data, java in JAVA_MURMUR2.items():
        assert _signed(murmur2(data)) == java
        assert _signed(client_ids.murmur2(data)) == java


def test_every_sharded_topic_has_the_same_partition_count():
    assert account_partitions() == 12
    assert {spec_for(topic).partitions for topic in SHARDED_TOPICS} == {12}


def test_a_new_id_is_a_uuid4_on_its_accounts_partition():
    for account in ACCOUNTS:
        request_id = new_request_id(account)
        parsed = uuid.UUID(request_id)
        assert (str(parsed), parsed.version, parsed.variant) == (request_id, 4, uuid.RFC_4122)
        assert is_co_partitioned(request_id, account)
        assert (murmur2(request_id.encode()) & 0x7FFFFFFF) % 12 == account_shard(account)


def test_ids_are_spread_over_the_partitions_and_fresh():
    ids = [new_request_id("alice") for _ in range(200)]
    assert len(set(ids)) == 200
    # The same account, other partition counts: still its partition of that count.
    for partitions in (1, 3, 7, 12, 64):
        assert is_co_partitioned(new_request_id("bob", partitions), "bob", partitions)


def test_a_plain_uuid_is_mostly_not_co_partitioned():
    misses = sum(not is_co_partitioned(str(uuid.uuid4()), "alice") for _ in range(600))
    assert misses > 450  # about 11 in 12


def test_the_client_mints_what_core_accepts():
    for account in ACCOUNTS:
        assert is_co_partitioned(client_ids.new_request_id(account, 12), account)
        assert client_ids.partition_of(account, 12) == account_shard(account)


def _create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_python_security())
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def _java_client_properties(bootstrap: str, path: Path) -> Path:
    security = KafkaSecurity.from_env()
    lines = [f"bootstrap.servers={bootstrap}", "acks=all"]
    if security.protocol != "PLAINTEXT":
        lines += [
            f"security.protocol={security.protocol}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={security.cafile}",
        ]
    if security.protocol == "SASL_SSL":
        lines += [
            "sasl.mechanism=SCRAM-SHA-512",
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{security.username}" password="{security.password}";',
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_records_keyed_by_the_id_land_on_the_accounts_partition(
    kafka_bootstrap, unique_name, tmp_path
):
    """aiokafka's producer and Kafka's Java producer, each sending to the real broker, put a
    record keyed by a minted id on the partition of its account."""
    topic = unique_name("ids")
    _create_topic(kafka_bootstrap, topic, account_partitions())
    wanted = {new_request_id(account): account_shard(account) for account in ACCOUNTS}

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, **aiokafka_security())
    await producer.start()
    try:
        sends = (producer.send_and_wait(topic, b"", key.encode()) for key in wanted)
        sent = await asyncio.gather(*sends)
    finally:
        await producer.stop()
    assert [meta.partition for meta in sent] == list(wanted.values())

    # The broker's own classpath holds the Java client (fetched once; a local broker has it).
    jars = await asyncio.to_thread(ensure_jars, echo=lambda _msg: None)
    java = await asyncio.to_thread(
        subprocess.run,
        [
            check_java(),
            "-cp",
            f"{jars}/*",
            str(Path(__file__).parent / "java" / "KeyedSend.java"),
            str(_java_client_properties(kafka_bootstrap, tmp_path / "client.properties")),
            topic,
        ],
        input="\n".join(wanted) + "\n",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert java.returncode == 0, java.stderr[-2000:]
    landed = dict(line.split() for line in java.stdout.splitlines())
    assert {key: int(partition) for key, partition in landed.items()} == wanted


def test_a_labelled_id_keeps_its_stem_and_lands_on_the_accounts_partition():
    for account in ACCOUNTS:
        request_id = co_partitioned_id("r7-012-deadbeef", account)
        assert request_id.startswith("r7-012-deadbeef-")
        assert is_co_partitioned(request_id, account)
        assert co_partitioned_id("r7-012-deadbeef", account) == request_id  # reproducible
