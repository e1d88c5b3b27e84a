"""Probe what a principal may do on the secured bus: one produce, one fetch, as the broker answers.

`write` and `read` return "ok" or the name of the error the broker answered with
(`TopicAuthorizationFailedError` for a topic outside the principal's ACLs; an authentication
error when its user does not exist or its password is wrong).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from cocoon.core.bus.security import KafkaSecurity

DENIED = "TopicAuthorizationFailedError"
# Aborts a client that waits for metadata of a topic it may not see.
CLIENT_TIMEOUT_MS = 8_000


@dataclass
class Bus:
    """A topic prefix on the session broker, its admin, and the principals' password files."""

    bootstrap: str
    prefix: str
    admin: KafkaSecurity
    users: dict[str, Path]

    def security(self, principal: str, password: str | None = None) -> KafkaSecurity:
        password = password or self.users[principal].read_text().strip()
        return KafkaSecurity("SASL_SSL", self.admin.cafile, username=principal, password=password)


async def write(bus: Bus, security: KafkaSecurity, topic: str) -> str:
    """ "ok", or the name of the error the broker answered a produce to `topic` with."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bus.bootstrap, request_timeout_ms=CLIENT_TIMEOUT_MS, **security.aiokafka()
    )
    try:
        await producer.start()
        await asyncio.wait_for(
            producer.send_and_wait(bus.prefix + topic, b"acl-probe", key=b"probe"),
            CLIENT_TIMEOUT_MS / 1000,
        )
        return "ok"
    except (KafkaError, TimeoutError) as exc:
        return type(exc).__name__
    finally:
        await producer.stop()


async def read(bus: Bus, security: KafkaSecurity, topic: str) -> str:
    """ "ok" when a fetch from `topic` returns its records, else the error the broker answered.

    Read implies Describe in Kafka's ACL model: a topic the principal may not even describe
    is refused at the metadata request, before any fetch (the producer's metadata wait raises
    at once, where a consumer would keep retrying)."""
    describer = AIOKafkaProducer(bootstrap_servers=bus.bootstrap, **security.aiokafka())
    try:
        await describer.start()
        await describer.partitions_for(bus.prefix + topic)
    except KafkaError as exc:
        return type(exc).__name__
    finally:
        await describer.stop()
    await admin_write(bus, topic)  # something to fetch
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bus.bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=CLIENT_TIMEOUT_MS,
        **security.aiokafka(),
    )
    partition = TopicPartition(bus.prefix + topic, 0)
    try:
        await consumer.start()
        consumer.assign([partition])
        consumer.seek(partition, 0)
        deadline = asyncio.get_running_loop().time() + CLIENT_TIMEOUT_MS / 1000
        while asyncio.get_running_loop().time() < deadline:
            if (await consumer.getmany(timeout_ms=500)).get(partition):
                return "ok"
        return "no records"
    except KafkaError as exc:
        return type(exc).__name__
    finally:
        await consumer.stop()


async def admin_write(bus: Bus, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bus.bootstrap, **bus.admin.aiokafka())
    await producer.start()
    try:
        await producer.send_and_wait(bus.prefix + topic, b"probe", key=b"probe", partition=0)
    finally:
        await producer.stop()
