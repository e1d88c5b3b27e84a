"""A consumer loop that decodes, validates and hands each record to a handler, dead-lettering
what it cannot handle, and commits only what is done.

Per record: decode (single-object Avro, into the catalog's record, latest version), validate
into the generated pydantic model, call the handler inside a CONSUMER span parented to the
producer's trace. Decoding/validation failures and `RejectRecord` from the handler send the
record to `<topic>.dlq` (see deadletter.py) and the loop carries on. Any other exception from the
handler is treated as transient or a bug: offsets of the records before it are committed, the
partition is rewound to the failing record, and the exception propagates (a restart retries it).

With `shards` (an `OwnedShards`), a consumer that shares its group with other instances is told
which partition numbers it gained and lost. A rebalance waits for the batch in hand to be handled
and committed, so `revoked` sees everything handled up to the last committed offset and nothing
is handled for a partition after it was revoked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from pydantic import ValidationError

from cocoon.core import codec
from cocoon.core.bus.deadletter import (
    InvalidValue,
    MissingValue,
    RejectRecord,
    dead_letter,
    reason_of,
)
from cocoon.core.bus.security import KafkaSecurity
from cocoon.core.bus.settings import ConsumerSettings, ProducerSettings, topic_prefix
from cocoon.core.catalog import DLQ_SUFFIX, TopicSpec, default_catalog, spec_for
from cocoon.core.codec.models import model_for
from cocoon.core.telemetry.messaging import consume_span, mark_failed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One decoded record as a handler sees it."""

    topic: str  # logical (catalog) name
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    record: str | None  # Avro full name; None for a tombstone
    value: Any  # the generated pydantic model (None for a tombstone)
    data: dict[str, Any] | None  # the same value as a plain dict
    headers: list[tuple[str, bytes]] = field(repr=False)
    raw: ConsumerRecord = field(repr=False)


Handler = Callable[[Message], Awaitable[None]]


class OwnedShards(Protocol):
    """What an instance does when the group moves partitions (numbers, across its topics)."""

    async def revoked(self, partitions: set[int]) -> None: ...

    async def assigned(self, partitions: set[int]) -> None: ...


class _ShardListener(ConsumerRebalanceListener):
    """Hands the group's decisions to `OwnedShards` as partition numbers, once the batch in
    hand is done (the consumer's `handling` lock)."""

    def __init__(self, shards: OwnedShards, handling: asyncio.Lock) -> None:
        self.shards = shards
        self.handling = handling

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.handling:
            await self.shards.revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self.handling:
            await self.shards.assigned({tp.partition for tp in assigned})


@dataclass
class ConsumerStats:
    handled: int = 0
    dead_lettered: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class BusConsumer:
    """Consume logical topics with a handler; see the module docstring for the guarantees.

        consumer = BusConsumer(bootstrap, ["worker.heartbeats"], group_id="scheduler",
                               handler=on_heartbeat)
        async with consumer:
            await consumer.run()          # until consumer.stop() or a handler bug

    `records` overrides the expected record per topic (topics outside the catalog).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        *,
        group_id: str,
        handler: Handler,
        client_id: str | None = None,
        prefix: str | None = None,
        settings: ConsumerSettings | None = None,
        catalog: dict[str, TopicSpec] | None = None,
        store: codec.SchemaStore | None = None,
        records: dict[str, str] | None = None,
        security: KafkaSecurity | None = None,
        shards: OwnedShards | None = None,
    ) -> None:
        self.prefix = topic_prefix() if prefix is None else prefix
        self.group_id = group_id
        self.handler = handler
        self.settings = settings or ConsumerSettings()
        self.stats = ConsumerStats()
        self._store = store or codec.default_store()
        catalog = catalog if catalog is not None else default_catalog()
        self._specs: dict[str, TopicSpec | None] = {}
        self._expected: dict[str, str | None] = {}
        for topic in topics:
            try:
                spec: TopicSpec | None = spec_for(topic, catalog)
            except KeyError:
                spec = None
            self._specs[topic] = spec
            self._expected[topic] = (records or {}).get(topic) or (spec.record if spec else None)
        self._logical = {self.prefix + t: t for t in topics}
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._handling = asyncio.Lock()
        client = client_id or group_id
        security = security or KafkaSecurity.from_env()
        extra: dict[str, Any] = {}
        if shards is not None:
            # The range assignor gives a member the same partition numbers of every topic, so
            # co-partitioned topics' partition n (one shard) goes to one instance.
            extra["partition_assignment_strategy"] = (RangePartitionAssignor,)
        self.kafka = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=client,
            **self.settings.kwargs(),
            **security.aiokafka(),
            **extra,
        )
        listener = _ShardListener(shards, self._handling) if shards is not None else None
        self.kafka.subscribe(list(self._logical), listener=listener)
        self._dlq = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=f"{client}-dlq",
            **ProducerSettings().kwargs(),
            **security.aiokafka(),
        )

    async def start(self) -> None:
        await self._dlq.start()
        await self.kafka.start()

    async def stop(self) -> None:
        """Finish the record in hand (a running `run()` returns), then close the clients."""
        self._stopping.set()
        await self._idle.wait()
        await self.kafka.stop()
        await self._dlq.stop()

    async def __aenter__(self) -> BusConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self) -> None:
        """Poll and handle until `stop()`; exceptions other than bad records propagate."""
        self._idle.clear()
        try:
            while not self._stopping.is_set():
                await self.poll_once()
        finally:
            self._idle.set()

    async def poll_once(self, timeout_ms: int | None = None) -> int:
        """Handle one fetched batch; returns the number of records handled or dead-lettered.

        The batch's offsets go in one commit at its end (one round trip, not one per partition:
        the next batch waits for it); a failure commits what was handled before it."""
        timeout = self.settings.poll_timeout_ms if timeout_ms is None else timeout_ms
        batch = await self.kafka.getmany(
            timeout_ms=timeout, max_records=self.settings.max_poll_records
        )
        async with self._handling:  # a rebalance waits for this batch
            return await self._handle_batch(batch)

    async def _handle_batch(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> int:
        done = 0
        handled: dict[TopicPartition, OffsetAndMetadata] = {}
        owned = self.kafka.assignment()
        # Records of a partition revoked since they were fetched belong to its next owner.
        pending = [(tp, records) for tp, records in batch.items() if records and tp in owned]
        for position, (tp, records) in enumerate(pending):
            for record in records:
                try:
                    await self._handle(record)
                except BaseException:
                    # Commit what is done and rewind every partition to its first unhandled
                    # record, so a retry (or the next owner) starts exactly there.
                    if handled:
                        await self.kafka.commit(handled)
                    self.kafka.seek(tp, record.offset)
                    for later_tp, later in pending[position + 1 :]:
                        self.kafka.seek(later_tp, later[0].offset)
                    raise
                handled[tp] = OffsetAndMetadata(record.offset + 1, "")
                done += 1
        if handled:
            await self.kafka.commit(handled)
        return done

    async def _handle(self, record: ConsumerRecord) -> None:
        topic = self._logical.get(record.topic, record.topic.removeprefix(self.prefix))
        with consume_span(record, group=self.group_id) as span:
            try:
                message = self._decode(topic, record)
                await self.handler(message)
            except (codec.DecodeError, RejectRecord, InvalidValue, MissingValue) as exc:
                mark_failed(span, exc)
                await self._dead_letter(topic, record, exc)
                return
        self.stats.handled += 1

    def _decode(self, topic: str, record: ConsumerRecord) -> Message:
        spec = self._specs.get(topic)
        key = None
        if record.key is not None:
            try:
                key = record.key.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidValue(f"key is not UTF-8: {exc}") from exc
        name = model = data = None
        if record.value is None:
            if spec is None or not spec.compacted:
                raise MissingValue(f"null value on {topic}, which is not compacted")
        else:
            name, data = self._store.decode(record.value, reader=self._expected.get(topic))
            try:
                model = model_for(name).from_avro(data)
            except ValidationError as exc:
                raise InvalidValue(str(exc)) from exc
        return Message(
            topic=topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            key=key,
            record=name,
            value=model,
            data=data,
            headers=list(record.headers or ()),
            raw=record,
        )

    async def _dead_letter(self, topic: str, record: ConsumerRecord, exc: BaseException) -> None:
        spec = self._specs.get(topic)
        dlq = spec.dead_letter if spec and spec.dead_letter else topic + DLQ_SUFFIX
        value, headers = dead_letter(record, exc, topic=topic, group=self.group_id)
        # Awaited before the offset is committed: a dead letter is never lost.
        await self._dlq.send_and_wait(self.prefix + dlq, value, key=record.key, headers=headers)
        reason = reason_of(exc)
        self.stats.dead_lettered += 1
        self.stats.by_reason[reason] = self.stats.by_reason.get(reason, 0) + 1
        log.warning(
            "dead-lettered %s/%d/%d to %s: %s", topic, record.partition, record.offset, dlq, exc
        )
