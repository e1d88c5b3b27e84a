"""Read `billing.ledger` to its end (read_committed): from the beginning (the audit, `cocoon
billing`), or from a snapshot's offsets (the service's start, `stream_snapshot`). The end is taken
when reading starts: with read_committed, Kafka's end offset is the last stable offset, so an
open transaction of a crashed instance is not waited for (a new transactional producer with the
same id aborts it before the service replays).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from cocoon.billing.ledger import Entry
from cocoon.billing.stream import LEDGER_TOPIC, LedgerRecordError, entry_from_record, order_entries
from cocoon.core import codec
from cocoon.core.bus.security import aiokafka_security
from cocoon.core.bus.settings import ConsumerSettings

log = logging.getLogger(__name__)

LEDGER_RECORD = "cocoon.billing.LedgerEntry"


@dataclass
class LedgerRead:
    """What `read_ledger` found: the entries and where each partition was read to."""

    entries: list[Entry]
    # billing.ledger partition -> the offset after the last one read (its end when read).
    ends: dict[int, int]


async def read_ledger(
    bootstrap: str, *, prefix: str = "", timeout_s: float = 120.0, client_id: str = "billing"
) -> list[Entry]:
    """Every committed ledger entry, once each, in ledger order."""
    read = await read_ledger_from(
        bootstrap, prefix=prefix, timeout_s=timeout_s, client_id=client_id
    )
    return read.entries


async def read_ledger_from(
    bootstrap: str,
    *,
    prefix: str = "",
    timeout_s: float = 120.0,
    client_id: str = "billing",
    from_offsets: Mapping[int, int] | None = None,
    from_seq: int = 0,
) -> LedgerRead:
    """The committed ledger entries from `from_offsets` (per partition; default the beginning)
    with a sequence number of at least `from_seq`, once each, in ledger order."""
    topic = prefix + LEDGER_TOPIC
    found: list[tuple[int, Entry]] = []
    # An entry has one record per account it touches, each with the whole entry: build it from
    # the first one read (most of a replay's cost is turning a record into an entry).
    causes: set[str] = set()

    def on_record(record: ConsumerRecord) -> None:
        for seq, entry in _decode(record.value, record.offset, causes):
            if seq >= from_seq:
                found.append((seq, entry))

    async with reader(bootstrap, f"{client_id}-replay") as consumer:
        ends = await read_to_end(
            consumer,
            prefix + LEDGER_TOPIC,
            on_record,
            from_offsets=from_offsets,
            timeout_s=timeout_s,
        )
    entries = order_entries(found)
    _check_sequence(sorted(seq for seq, _ in found), from_seq, topic)
    log.info("replayed %s: %d entries from seq %d", topic, len(entries), from_seq)
    return LedgerRead(entries, ends)


def _check_sequence(seqs: list[int], from_seq: int, topic: str) -> None:
    """Say loudly when the entries read are not numbered from_seq, from_seq + 1, ... with
    neither gap nor two entries under one number: every applied entry takes the next number and
    commits or dies with its process, so either means a snapshot and the log disagree (a state
    this process would then carry on from; kept as a warning to find its cause, not a stop)."""
    count = len(seqs)
    if seqs == list(range(from_seq, from_seq + count)):
        return
    expected = from_seq + next((i for i, seq in enumerate(seqs) if seq != from_seq + i), count)
    log.error(
        "%s: entry numbers are not contiguous from %d (%d expected next; %d entries read)",
        topic,
        from_seq,
        expected,
        count,
    )


@contextlib.asynccontextmanager
async def reader(bootstrap: str, client_id: str) -> AsyncIterator[AIOKafkaConsumer]:
    settings = ConsumerSettings(max_poll_records=5000)
    kwargs = settings.kwargs()
    for name in ("session_timeout_ms", "heartbeat_interval_ms", "max_poll_interval_ms"):
        kwargs.pop(name)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        client_id=client_id,
        **kwargs,
        **aiokafka_security(),
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def read_to_end(
    consumer: AIOKafkaConsumer,
    topic: str,
    on_record: Callable[[ConsumerRecord], None],
    *,
    from_offsets: Mapping[int, int] | None = None,
    timeout_s: float = 120.0,
) -> dict[int, int]:
    """Feed every committed record of `topic` from `from_offsets` (default: the beginning) to
    its end as of now to `on_record`; the end offset of each partition."""
    partitions = await topic_partitions(consumer, topic)
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    for tp in partitions:
        if from_offsets and tp.partition in from_offsets:
            consumer.seek(tp, from_offsets[tp.partition])
    ends = await consumer.end_offsets(partitions)
    deadline = time.monotonic() + timeout_s
    remaining = {tp for tp, end in ends.items() if await consumer.position(tp) < end}
    while remaining:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {topic} took longer than {timeout_s}s")
        batch = await consumer.getmany(*remaining, timeout_ms=200)
        for records in batch.values():
            for record in records:
                on_record(record)
        # Positions also move past transaction markers, which are never returned.
        remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    return {tp.partition: end for tp, end in ends.items()}


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    ids = consumer.partitions_for_topic(topic)
    if ids is None:
        await consumer._client.force_metadata_update()  # first contact with the topic
        ids = consumer.partitions_for_topic(topic)
    if not ids:
        raise RuntimeError(f"topic {topic} does not exist (run `cocoon topics apply`)")
    return [TopicPartition(topic, p) for p in sorted(ids)]


def _decode(value: bytes | None, offset: int, causes: set[str]) -> list[tuple[int, Entry]]:
    """The entry of one record, unless another record of it (`causes`) was read already."""
    if value is None:
        return []
    try:
        _name, data = codec.decode(value, reader=LEDGER_RECORD)
        if data["cause_id"] in causes:
            return []
        causes.add(data["cause_id"])
        return [entry_from_record(data)]
    except (codec.DecodeError, LedgerRecordError) as exc:
        # Only billing writes this topic; a record it cannot read is a bug to fix, never money
        # to guess at, so replay stops rather than rebuild a state missing it.
        raise RuntimeError(f"unreadable {LEDGER_TOPIC} record at offset {offset}: {exc}") from exc
