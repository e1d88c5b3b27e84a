"""Group-less readers: every scheduler instance needs every verdict, heartbeat and first chunk.

A consumer group would split these topics between instances, but each instance's pool must see
every worker, so these feeds assign all partitions themselves and commit nothing: verdicts are
read from the beginning (a compacted topic whose latest record per worker is the state), the
live topics from their end (or from a moment before it, `since_ms`). Records go to the handler
raw (`ConsumerRecord`), because the responses feed must not decode whole chunks (see chunks.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from aiokafka.structs import ConsumerRecord

from cocoon.core.bus.broadcast import BroadcastReader

# (logical topic, record); synchronous so one record is handled atomically on the loop.
FeedHandler = Callable[[str, ConsumerRecord], None]


class Feed(BroadcastReader):
    """A `BroadcastReader` that hands over raw records: the scheduler decodes only what it needs."""

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        handler: FeedHandler,
        *,
        start_at: Literal["beginning", "end"],
        prefix: str,
        client_id: str,
        since_ms: int | None = None,
    ) -> None:
        super().__init__(
            bootstrap,
            topics,
            handler=None,
            from_beginning=start_at == "beginning",
            since_ms=since_ms,
            prefix=prefix,
            client_id=client_id,
        )
        self.raw_handler = handler

    async def _handle(self, record: ConsumerRecord) -> None:
        self.raw_handler(self._logical.get(record.topic, record.topic), record)
