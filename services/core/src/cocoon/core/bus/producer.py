"""A producer that writes catalog topics with the codec and carries the trace context."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from cocoon.core import codec
from cocoon.core.bus.partitioner import CachedKeyPartitioner
from cocoon.core.bus.security import KafkaSecurity
from cocoon.core.bus.settings import ProducerSettings, topic_prefix
from cocoon.core.catalog import TopicSpec, default_catalog, spec_for
from cocoon.core.telemetry.messaging import produce_span, record_sent
from cocoon.core.telemetry.propagation import Headers, inject_headers


class BusProducer:
    """Send Avro records to catalog topics by their logical names.

        async with BusProducer(bootstrap, client_id="gateway") as producer:
            await producer.send("inference.requests", models.InferenceRequest(...))

    The record type comes from the catalog and is checked; the key defaults to the record field
    the catalog names as the topic's key. Physical topic = `prefix + name`.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str = "cocoon",
        prefix: str | None = None,
        settings: ProducerSettings | None = None,
        catalog: dict[str, TopicSpec] | None = None,
        store: codec.SchemaStore | None = None,
        transactional_id: str | None = None,
        security: KafkaSecurity | None = None,
    ) -> None:
        self.prefix = topic_prefix() if prefix is None else prefix
        self.settings = settings or ProducerSettings()
        self._catalog = catalog
        self._store = store
        self.kafka = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            transactional_id=transactional_id,
            partitioner=CachedKeyPartitioner(),
            **self.settings.kwargs(),
            **(security or KafkaSecurity.from_env()).aiokafka(),
        )

    async def start(self) -> None:
        await self.kafka.start()

    async def stop(self) -> None:
        await self.kafka.stop()

    async def __aenter__(self) -> BusProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def encode(
        self, topic: str, value: Any, *, key: str | None = None, record: str | None = None
    ) -> tuple[bytes | None, bytes]:
        """(key bytes, value bytes) for `value` on the logical topic `topic`."""
        spec = self._spec(topic)
        name = record or (spec.record if spec else None)
        if hasattr(value, "avro_name"):
            if name is not None and value.avro_name != name:
                raise codec.EncodeError(f"{topic} carries {name}, not {value.avro_name}")
            name, value = value.avro_name, value.to_avro()
        if name is None:
            raise codec.EncodeError(f"{topic} is not in the catalog: pass record=<full name>")
        if spec is not None and spec.key and isinstance(value, Mapping) and spec.key in value:
            natural = str(value[spec.key])
            if key is not None and key != natural:
                raise codec.EncodeError(f"{topic} is keyed by {spec.key}={natural!r}, not {key!r}")
            key = natural
        store = self._store or codec.default_store()
        return (key.encode() if key is not None else None), store.encode(name, value)

    async def send(
        self,
        topic: str,
        value: Any,
        *,
        key: str | None = None,
        record: str | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        wait: bool = True,
        traced: bool = True,
    ) -> RecordMetadata | asyncio.Future:
        """Encode and send; returns the broker's ack (or, with wait=False, a future of it)."""
        key_bytes, data = self.encode(topic, value, key=key, record=record)
        return await self.send_raw(
            topic,
            data,
            key=key_bytes,
            headers=headers,
            partition=partition,
            wait=wait,
            traced=traced,
        )

    async def send_raw(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        wait: bool = True,
        traced: bool = True,
    ) -> RecordMetadata | asyncio.Future:
        """Send already-encoded bytes (tombstones, dead letters, tests of bad input).

        `traced=False` skips the PRODUCER span (the current context still goes into the
        headers): for bulk records no trace follows, where a span each would cost more than
        the send (billing writes several ledger records per receipt)."""
        physical = self.prefix + topic
        if not traced:
            future = await self.kafka.send(
                physical, value, key=key, partition=partition, headers=inject_headers(headers)
            )
            return future if not wait else await future
        with produce_span(physical, key) as span:
            future = await self.kafka.send(
                physical, value, key=key, partition=partition, headers=inject_headers(headers)
            )
            if not wait:
                return future
            metadata = await future
            record_sent(span, metadata)
            return metadata

    def _spec(self, topic: str) -> TopicSpec | None:
        try:
            return spec_for(
                topic, self._catalog if self._catalog is not None else default_catalog()
            )
        except KeyError:
            return None
