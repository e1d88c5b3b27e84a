"""Mirror a compacted topic into memory: read it from the beginning to its end, then follow.

No consumer group: every instance (service replica, CLI run) needs the whole state, and there is
nothing to commit. A record that cannot be decoded is logged and skipped; it cannot be
dead-lettered here, since every reader would dead-letter it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from cocoon.core import codec
from cocoon.core.bus.security import aiokafka_security
from cocoon.core.bus.settings import ConsumerSettings, topic_prefix
from cocoon.core.codec.models import model_for

log = logging.getLogger(__name__)

# (key, value model or None for a tombstone)
MirrorHandler = Callable[[str | None, Any], Awaitable[None] | None]


class MirrorError(RuntimeError):
    """The topic is missing, or reading it did not finish in time."""


class CompactedMirror:
    def __init__(
        self, bootstrap: str, topic: str, *, prefix: str | None = None, client_id: str = "mirror"
    ) -> None:
        self.topic = topic
        self.physical = (topic_prefix() if prefix is None else prefix) + topic
        self.kafka = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            enable_auto_commit=False,
            # The bus's wait (the broker answers as soon as a record lands) and isolation.
            fetch_max_wait_ms=ConsumerSettings.fetch_max_wait_ms,
            isolation_level=ConsumerSettings.isolation_level,
            **aiokafka_security(),
        )
        self._tps: list[TopicPartition] = []

    async def start(self, wait_s: float = 5.0) -> None:
        await self.kafka.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        client = self.kafka._client  # aiokafka has no public metadata refresh
        client.add_topic(self.physical)  # a group-less consumer only tracks what it is told
        while True:
            await client.force_metadata_update()
            parts = self.kafka.partitions_for_topic(self.physical)
            # A topic just created may take a moment to appear in every broker's metadata.
            if parts or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        if not parts:
            await self.kafka.stop()
            raise MirrorError(f"topic {self.physical} does not exist (run `cocoon topics apply`)")
        self._tps = [TopicPartition(self.physical, p) for p in sorted(parts)]
        self.kafka.assign(self._tps)
        await self.kafka.seek_to_beginning(*self._tps)

    async def stop(self) -> None:
        await self.kafka.stop()

    async def __aenter__(self) -> CompactedMirror:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def catch_up(self, handler: MirrorHandler, timeout_s: float = 30.0) -> int:
        """Hand every record up to the current end to `handler`; the number handled."""
        ends = await self.kafka.end_offsets(self._tps)
        done = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while await self._behind(ends):
            if loop.time() > deadline:
                raise MirrorError(f"reading {self.physical} to its end took over {timeout_s}s")
            done += await self.poll(handler, timeout_ms=100)
        return done

    async def _behind(self, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await self.kafka.position(tp) < end:
                return True
        return False

    async def poll(self, handler: MirrorHandler, timeout_ms: int = 100) -> int:
        """One fetch; each record goes to `handler` in partition order."""
        batch = await self.kafka.getmany(*self._tps, timeout_ms=timeout_ms)
        done = 0
        for records in batch.values():
            for record in records:
                key = record.key.decode("utf-8", "replace") if record.key is not None else None
                try:
                    value = self._decode(record.value)
                except (codec.CodecError, ValueError) as exc:
                    log.warning(
                        "skipping undecodable %s/%d/%d: %s",
                        self.topic,
                        record.partition,
                        record.offset,
                        exc,
                    )
                    continue
                result = handler(key, value)
                if asyncio.iscoroutine(result):
                    await result
                done += 1
        return done

    def _decode(self, data: bytes | None) -> Any:
        if data is None:
            return None
        name, value = codec.default_store().decode(data)
        return model_for(name).from_avro(value)
