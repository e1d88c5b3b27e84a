"""Group-less readers: every scheduler instance needs every verdict, heartbeat and first chunk.

A consumer group would split these topics between instances, but each instance's pool must see
every worker, so these feeds assign all partitions themselves and commit nothing: verdicts are
read from the beginning (a compacted topic whose latest record per worker is the state), the
live topics from their end. Records go to the handler raw (`ConsumerRecord`), because the
responses feed must not decode whole chunks (see chunks.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from cocoon.core.bus.settings import ConsumerSettings

log = logging.getLogger(__name__)

# (logical topic, record); synchronous so one record is handled atomically on the loop.
FeedHandler = Callable[[str, ConsumerRecord], None]

_GROUP_ONLY = ("enable_auto_commit", "session_timeout_ms", "heartbeat_interval_ms")


class Feed:
    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        handler: FeedHandler,
        *,
        start_at: Literal["beginning", "end"],
        prefix: str,
        client_id: str,
    ) -> None:
        self.handler = handler
        self.start_at = start_at
        self._logical = {prefix + t: t for t in topics}
        kwargs = ConsumerSettings().kwargs()
        for name in (*_GROUP_ONLY, "max_poll_interval_ms"):
            kwargs.pop(name, None)
        self.kafka = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id=client_id,
            **kwargs,
        )
        self._ends: dict[TopicPartition, int] = {}
        self.caught_up = asyncio.Event()

    async def start(self) -> None:
        await self.kafka.start()
        partitions: list[TopicPartition] = []
        for physical in self._logical:
            ids = self.kafka.partitions_for_topic(physical)
            if not ids:
                await self.kafka._client.force_metadata_update()  # first contact with the topic
                ids = self.kafka.partitions_for_topic(physical)
            if not ids:
                raise RuntimeError(f"topic {physical} does not exist (run `cocoon topics apply`)")
            partitions += [TopicPartition(physical, p) for p in sorted(ids)]
        self.kafka.assign(partitions)
        self._ends = await self.kafka.end_offsets(partitions)
        if self.start_at == "beginning":
            await self.kafka.seek_to_beginning(*partitions)
        else:
            for tp, end in self._ends.items():
                self.kafka.seek(tp, end)
        await self._check_caught_up()

    async def stop(self) -> None:
        await self.kafka.stop()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            batch = await self.kafka.getmany(timeout_ms=100, max_records=1000)
            for tp, records in batch.items():
                topic = self._logical.get(tp.topic, tp.topic)
                for record in records:
                    self.handler(topic, record)
            await self._check_caught_up()

    async def _check_caught_up(self) -> None:
        if self.caught_up.is_set():
            return
        for tp, end in self._ends.items():
            if await self.kafka.position(tp) < end:
                return
        self.caught_up.set()
