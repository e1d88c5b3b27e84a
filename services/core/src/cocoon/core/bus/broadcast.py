"""Read every partition of some topics without a consumer group: each instance sees everything.

Two uses: an instance that waits for replies addressed to it (the gateway reads the reply topics
from their end and keeps its own records), and a service that mirrors a compacted topic into
memory (verdicts, the registry) from the beginning. With no group there is nothing to commit, and a
bad record is logged and skipped rather than dead-lettered (every instance would dead-letter it
again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from cocoon.core import codec
from cocoon.core.bus.security import KafkaSecurity
from cocoon.core.bus.settings import ConsumerSettings, topic_prefix
from cocoon.core.telemetry.messaging import consume_span

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BroadcastRecord:
    topic: str  # logical (catalog) name
    key: str | None
    record: str | None  # Avro full name; None for a tombstone
    value: dict | None
    timestamp_ms: int
    headers: list[tuple[str, bytes]] = field(repr=False)


BroadcastHandler = Callable[[BroadcastRecord], Awaitable[None] | None]


class BroadcastReader:
    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        handler: BroadcastHandler | None,
        *,
        from_beginning: bool,
        since_ms: int | None = None,
        prefix: str | None = None,
        settings: ConsumerSettings | None = None,
        client_id: str = "cocoon-broadcast",
        security: KafkaSecurity | None = None,
    ) -> None:
        self.prefix = topic_prefix() if prefix is None else prefix
        self.handler = handler
        self.from_beginning = from_beginning
        self.since_ms = since_ms  # start at the first record stamped at or after this (epoch ms)
        self.skipped = 0
        self._logical = {self.prefix + t: t for t in topics}
        kwargs = (settings or ConsumerSettings()).kwargs()
        kwargs.pop("enable_auto_commit", None)
        kwargs.pop("session_timeout_ms", None)
        kwargs.pop("heartbeat_interval_ms", None)
        kwargs.pop("max_poll_interval_ms", None)
        self.kafka = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id=client_id,
            **kwargs,
            **(security or KafkaSecurity.from_env()).aiokafka(),
        )
        self._end_at_start: dict[TopicPartition, int] = {}
        self._caught_up = asyncio.Event()

    async def start(self) -> None:
        await self.kafka.start()
        partitions: list[TopicPartition] = []
        for physical in self._logical:
            ids = self.kafka.partitions_for_topic(physical)
            if ids is None:
                await self.kafka._client.force_metadata_update()  # first contact with the topic
                ids = self.kafka.partitions_for_topic(physical)
            if not ids:
                raise RuntimeError(f"topic {physical} does not exist (run `cocoon topics apply`)")
            partitions += [TopicPartition(physical, p) for p in sorted(ids)]
        self.kafka.assign(partitions)
        self._end_at_start = await self.kafka.end_offsets(partitions)
        if self.from_beginning:
            await self.kafka.seek_to_beginning(*partitions)
        elif self.since_ms is not None:
            found = await self.kafka.offsets_for_times({tp: self.since_ms for tp in partitions})
            for tp, end in self._end_at_start.items():
                at = found.get(tp)
                self.kafka.seek(tp, end if at is None else at.offset)
        else:
            for tp, end in self._end_at_start.items():
                self.kafka.seek(tp, end)
        await self._check_caught_up()

    async def stop(self) -> None:
        await self.kafka.stop()

    async def wait_caught_up(self, timeout_s: float | None = None) -> None:
        """Return once everything that was in the topics at start has been handled."""
        await asyncio.wait_for(self._caught_up.wait(), timeout_s)

    @property
    def caught_up(self) -> asyncio.Event:
        return self._caught_up

    async def catch_up(self, timeout_s: float) -> None:
        """Run until everything the topics held at start has been handled, then return (a
        start-up step: `run` may follow to keep reading)."""
        stop = asyncio.Event()
        running = asyncio.create_task(self.run(stop))
        try:
            await self.wait_caught_up(timeout_s)
        finally:
            stop.set()
            await running

    async def run(self, stopping: asyncio.Event | None = None) -> None:
        while stopping is None or not stopping.is_set():
            batch = await self.kafka.getmany(timeout_ms=100, max_records=1000)
            for records in batch.values():
                for record in records:
                    await self._handle(record)
            await self._check_caught_up()

    async def _check_caught_up(self) -> None:
        if self._caught_up.is_set():
            return
        for tp, end in self._end_at_start.items():
            if await self.kafka.position(tp) < end:
                return
        self._caught_up.set()

    async def _handle(self, record) -> None:
        topic = self._logical.get(record.topic, record.topic)
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        with consume_span(record, operation="receive"):
            try:
                if record.value is None:
                    name, value = None, None
                else:
                    name, value = codec.decode(record.value)
            except codec.DecodeError as exc:
                self.skipped += 1
                log.warning("skipping undecodable record on %s@%s: %s", topic, record.offset, exc)
                return
            # Only a subclass that overrides _handle passes no handler (scheduler feeds).
            assert self.handler is not None
            outcome = self.handler(
                BroadcastRecord(topic, key, name, value, record.timestamp, list(record.headers))
            )
            if outcome is not None:
                await outcome
