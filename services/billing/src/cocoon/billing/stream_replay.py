"""Read `billing.ledger` from the beginning to its end (read_committed): billing's whole state.

Used at service start (before any input is consumed) and by `cocoon billing`. The end is taken
when reading starts: with read_committed, Kafka's end offset is the last stable offset, so an
open transaction of a crashed instance is not waited for (a new transactional producer with the
same id aborts it before the service replays).
"""

from __future__ import annotations

import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from cocoon.billing.ledger import Entry
from cocoon.billing.stream import LEDGER_TOPIC, LedgerRecordError, entry_from_record, order_entries
from cocoon.core import codec
from cocoon.core.bus.security import aiokafka_security
from cocoon.core.bus.settings import ConsumerSettings

log = logging.getLogger(__name__)

LEDGER_RECORD = "cocoon.billing.LedgerEntry"


async def read_ledger(
    bootstrap: str, *, prefix: str = "", timeout_s: float = 120.0, client_id: str = "billing"
) -> list[Entry]:
    """Every committed ledger entry, once each, in ledger order."""
    topic = prefix + LEDGER_TOPIC
    settings = ConsumerSettings(max_poll_records=5000)
    kwargs = settings.kwargs()
    for name in ("session_timeout_ms", "heartbeat_interval_ms", "max_poll_interval_ms"):
        kwargs.pop(name)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        client_id=f"{client_id}-replay",
        **kwargs,
        **aiokafka_security(),
    )
    await consumer.start()
    found: list[tuple[int, Entry]] = []
    try:
        partitions = await _partitions(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        remaining = {tp for tp, end in ends.items() if end > 0}
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"replaying {topic} took longer than {timeout_s}s")
            batch = await consumer.getmany(*remaining, timeout_ms=200)
            for records in batch.values():
                for record in records:
                    found += _decode(record.value, record.offset)
            # Positions also move past transaction markers, which are never returned.
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    entries = order_entries(found)
    log.info("replayed %s: %d entries", topic, len(entries))
    return entries


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    ids = consumer.partitions_for_topic(topic)
    if ids is None:
        await consumer._client.force_metadata_update()  # first contact with the topic
        ids = consumer.partitions_for_topic(topic)
    if not ids:
        raise RuntimeError(f"topic {topic} does not exist (run `cocoon topics apply`)")
    return [TopicPartition(topic, p) for p in sorted(ids)]


def _decode(value: bytes | None, offset: int) -> list[tuple[int, Entry]]:
    if value is None:
        return []
    try:
        _name, data = codec.decode(value, reader=LEDGER_RECORD)
        return [entry_from_record(data)]
    except (codec.DecodeError, LedgerRecordError) as exc:
        # Only billing writes this topic; a record it cannot read is a bug to fix, never money
        # to guess at, so replay stops rather than rebuild a state missing it.
        raise RuntimeError(f"unreadable {LEDGER_TOPIC} record at offset {offset}: {exc}") from exc
