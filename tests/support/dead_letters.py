"""Read a dead-letter topic back: what was refused, and why."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer

from cocoon.core import codec
from cocoon.core.bus.security import aiokafka_security
from cocoon.core.codec import models


async def dead_letters(
    bootstrap: str, dlq_topic: str, *, expect: int, timeout_s: float = 20.0
) -> list[models.DeadLetter]:
    """The dead letters on `dlq_topic` (physical name), waiting until `expect` are there."""
    consumer = AIOKafkaConsumer(
        dlq_topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        **aiokafka_security(),
    )
    await consumer.start()
    letters: list[models.DeadLetter] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(letters) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    letter = codec.decode_model(record.value, reader="cocoon.bus.DeadLetter")
                    assert isinstance(letter, models.DeadLetter)
                    letters.append(letter)
    finally:
        await consumer.stop()
    return letters
