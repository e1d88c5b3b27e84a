"""Bad records go to `<topic>.dlq` byte for byte with the reason, and the consumer carries on."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from cocoon.core import codec
from cocoon.core.bus import (
    REASON_HEADER,
    SOURCE_HEADER,
    BusConsumer,
    BusProducer,
    Message,
    RejectRecord,
)
from cocoon.core.bus.admin import apply_topics
from cocoon.core.bus.security import aiokafka_security
from cocoon.core.catalog import dead_letter_spec, load_catalog
from cocoon.core.codec import MAGIC, models

CATALOG = load_catalog()
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TOPIC = "worker.heartbeats"


def heartbeat(worker_id: str, seq: int = 1) -> dict:
    return models.Heartbeat(
        worker_id=worker_id,
        models=["m"],
        state="READY",
        max_active_requests=1,
        active_requests=0,
        coefficient=1000,
        work_topic="work.x",
        seq=seq,
        sent_at=NOW,
    ).to_avro()


async def read_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 20.0) -> list:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        **aiokafka_security(),
    )
    await consumer.start()
    records = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            records += [r for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    return records


async def test_bad_records_are_dead_lettered_and_the_next_good_one_is_handled(
    kafka_bootstrap, unique_name
):
    prefix = unique_name("dlq") + "."
    spec = CATALOG[TOPIC]
    apply_topics(kafka_bootstrap, [spec, dead_letter_spec(spec)], prefix=prefix)

    valid = codec.encode("cocoon.worker.Heartbeat", heartbeat("w-1"))
    bad: list[tuple[str, bytes | None]] = [
        ("BAD_MAGIC", b"hello world"),
        ("INVALID_BODY", valid[:-3]),
        ("UNKNOWN_SCHEMA", MAGIC + b"\x01" * 8 + valid[10:]),
        (
            "WRONG_RECORD",
            codec.encode(
                "cocoon.billing.Balance",
                {
                    "account_id": "a",
                    "account_kind": "CLIENT",
                    "available_nanoton": 1,
                    "held_nanoton": 0,
                    "last_entry_id": "e",
                    "entries_applied": 1,
                    "updated_at": NOW,
                },
            ),
        ),
        ("REJECTED", codec.encode("cocoon.worker.Heartbeat", heartbeat("reject-me"))),
        ("MISSING_VALUE", None),  # a tombstone on a topic that is not compacted
    ]
    handled: list[Message] = []

    async def handler(message: Message) -> None:
        if message.value.worker_id == "reject-me":
            raise RejectRecord("worker is not attested")
        handled.append(message)

    async with BusProducer(kafka_bootstrap, prefix=prefix) as producer:
        for index, (_, value) in enumerate(bad):
            await producer.send_raw(
                TOPIC,
                value,
                key=f"k{index}".encode(),
                partition=0,
                headers=[("x-case", str(index).encode())],
            )
        await producer.send(TOPIC, heartbeat("w-ok", seq=9), partition=0)

    group = unique_name("g")
    consumer = BusConsumer(kafka_bootstrap, [TOPIC], group_id=group, handler=handler, prefix=prefix)
    async with consumer:
        deadline = time.monotonic() + 20
        while not handled:
            assert time.monotonic() < deadline, consumer.stats
            await consumer.poll_once()
        tp = TopicPartition(prefix + TOPIC, 0)
        assert await consumer.kafka.committed(tp) == len(bad) + 1
    assert [m.value.worker_id for m in handled] == ["w-ok"]
    assert handled[0].offset == len(bad)
    assert consumer.stats.dead_lettered == len(bad)
    assert consumer.stats.by_reason == {reason: 1 for reason, _ in bad}

    letters = await read_all(kafka_bootstrap, prefix + TOPIC + ".dlq", expect=len(bad))
    assert len(letters) == len(bad)
    for index, ((reason, original), letter) in enumerate(zip(bad, letters, strict=True)):
        _, dead = codec.decode(letter.value, reader="cocoon.bus.DeadLetter")
        assert dead["reason"] == reason, dead["error"]
        assert dead["value"] == original, "original value kept byte for byte"
        assert dead["key"] == letter.key == f"k{index}".encode()
        assert (dead["source_topic"], dead["source_partition"], dead["source_offset"]) == (
            TOPIC,
            0,
            index,
        )
        assert dead["consumer_group"] == group
        assert {"key": "x-case", "value": str(index).encode()} in dead["headers"]
        headers = dict(letter.headers)
        assert headers[REASON_HEADER] == reason.encode()
        assert headers[SOURCE_HEADER] == f"{TOPIC}/0/{index}".encode()
        assert headers["x-case"] == str(index).encode()
        assert dead["error"], "a readable error is recorded"
    errors = [codec.decode(x.value)[1]["error"] for x in letters]
    assert "not Avro single-object encoding" in errors[0]
    assert "worker is not attested" in errors[4]


async def test_tombstones_on_compacted_topics_reach_the_handler(kafka_bootstrap, unique_name):
    prefix = unique_name("dlq") + "."
    spec = CATALOG["attestation.verdicts"]
    apply_topics(kafka_bootstrap, [spec, dead_letter_spec(spec)], prefix=prefix)
    seen: list[Message] = []

    async def handler(message: Message) -> None:
        seen.append(message)

    async with BusProducer(kafka_bootstrap, prefix=prefix) as producer:
        await producer.send_raw("attestation.verdicts", None, key=b"w-gone")
    consumer = BusConsumer(
        kafka_bootstrap,
        ["attestation.verdicts"],
        group_id=unique_name("g"),
        handler=handler,
        prefix=prefix,
    )
    async with consumer:
        deadline = time.monotonic() + 20
        while not seen:
            assert time.monotonic() < deadline
            await consumer.poll_once()
    assert (seen[0].key, seen[0].value, seen[0].record) == ("w-gone", None, None)
    assert consumer.stats.dead_lettered == 0
