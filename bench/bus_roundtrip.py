"""Produce-to-consume round trip and produce throughput through a real local broker.

Runs plaintext and the production shape (TLS + SASL/SCRAM-SHA-512, the authorizer on) side by
side, on the same broker, in one run, and ends with one JSON line per configuration:

    .venv/bin/python bench/bus_roundtrip.py [--samples 2000] [--throughput 100000] [--defaults]

`--defaults` adds aiokafka's library defaults (the baseline of the tuned settings).

Round trip = encode (Avro single-object) + produce + broker + fetch + decode, one record in flight
at a time (low load). Throughput = records encoded and produced per second from one process
(one core) with acks=all and idempotence, waiting for every ack.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from cocoon.core import codec
from cocoon.core.bus.admin import apply_topics
from cocoon.core.bus.settings import ConsumerSettings, ProducerSettings
from cocoon.core.catalog import load_catalog
from cocoon.core.kafka import broker

TOPIC = "inference.responses"
RECORD = "cocoon.inference.SealedChunk"


def chunk(seq: int) -> dict:
    return {
        "request_id": str(uuid.uuid4()),
        "worker_id": "w-bench",
        "attempt": 1,
        "gateway_id": "gw-0",
        "seq": seq,
        "final": False,
        "ciphertext": os.urandom(64),  # about one sealed token chunk
        "error_code": None,
        "produced_at": int(time.time() * 1000),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def client_kwargs(tuned: bool, security: dict, **consumer_overrides) -> tuple[dict, dict]:
    """(producer kwargs, consumer kwargs): Cocoon's bus settings, or aiokafka's defaults, with
    the connection's `security` (cocoon.core.bus.security) arguments."""
    if not tuned:
        return {"acks": "all", **security}, {"auto_offset_reset": "earliest", **security}
    consumer = dataclasses.replace(ConsumerSettings(), **consumer_overrides)
    return {**ProducerSettings().kwargs(), **security}, {**consumer.kwargs(), **security}


async def round_trip(
    bootstrap: str, topic: str, samples: int, clients: tuple[dict, dict]
) -> list[float]:
    producer_kwargs, consumer_kwargs = clients
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **producer_kwargs)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:6]}",
        **consumer_kwargs,
    )
    await producer.start()
    await consumer.start()
    consumer.subscribe([topic])
    store = codec.default_store()
    # Join the group and reach the end of the log before timing.
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    await consumer.seek_to_end()
    timings = []
    try:
        for seq in range(samples + 50):
            value = chunk(seq)
            started = time.perf_counter()
            await producer.send(topic, store.encode(RECORD, value), key=b"k")
            received = None
            while received is None:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        received = store.decode(record.value)
            elapsed = time.perf_counter() - started
            if seq >= 50:  # warm-up excluded
                timings.append(elapsed * 1000)
    finally:
        await consumer.stop()
        await producer.stop()
    return timings


async def paced_stream(
    bootstrap: str,
    topic: str,
    samples: int,
    clients: tuple[dict, dict],
    interval_s: float = 0.005,
    streams: int = 1,
) -> list[float]:
    """Latency of records sent every `interval_s` (a token stream) to a consumer that keeps polling.

    Unlike the ping-pong above, the next record often arrives while the consumer's previous fetch
    is still being handed out; a fetch then in flight without that partition waits its
    `fetch_max_wait_ms` before the record can be fetched.
    """
    producer_kwargs, consumer_kwargs = clients
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **producer_kwargs)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:6]}",
        **consumer_kwargs,
    )
    await producer.start()
    await consumer.start()
    consumer.subscribe([topic])
    store = codec.default_store()
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    await consumer.seek_to_end()
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    total = samples + 50

    async def consume() -> None:
        while len(latencies) < total:
            batch = await consumer.getmany(timeout_ms=1000)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    seq = store.decode(record.value)[1]["seq"]
                    latencies.append((now - sent_at[seq]) * 1000)

    reader = asyncio.create_task(consume())
    try:
        for seq in range(total):
            sent_at[seq] = time.perf_counter()
            key = f"stream-{seq % streams}".encode()  # several requests spread over partitions
            await producer.send(topic, store.encode(RECORD, chunk(seq)), key=key)
            await asyncio.sleep(interval_s)
        await asyncio.wait_for(reader, timeout=30)
    finally:
        reader.cancel()
        await consumer.stop()
        await producer.stop()
    return latencies[50:]


async def throughput(
    bootstrap: str, topic: str, count: int, clients: tuple[dict, dict]
) -> tuple[float, float]:
    producer_kwargs = clients[0]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **producer_kwargs)
    await producer.start()
    store = codec.default_store()
    values = [chunk(i) for i in range(count)]
    cpu_started = time.process_time()
    started = time.perf_counter()
    try:
        futures = [
            await producer.send(topic, store.encode(RECORD, v), key=v["request_id"].encode())
            for v in values
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return count / wall, count / cpu


def encode_only(count: int) -> float:
    store = codec.default_store()
    values = [chunk(i) for i in range(count)]
    started = time.perf_counter()
    for value in values:
        store.encode(RECORD, value)
    return count / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--throughput", type=int, default=100_000)
    parser.add_argument(
        "--defaults", action="store_true", help="also run aiokafka's default settings"
    )
    parser.add_argument(
        "--sweep", action="store_true", help="also sweep fetch_max_wait_ms and isolation level"
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="cocoon-bench-kafka-"))
    port = broker.free_port_pair()
    layout = broker.BrokerLayout(
        home=home, port=port, controller_port=port + 1, dev_plain_port=broker.free_port_pair()
    )
    broker.start(layout)
    # Plaintext: the same broker's unauthenticated listener (the dev chart's `plain`), against
    # the production shape: TLS + SCRAM-SHA-512, the authorizer on. Both as the admin.
    admin = layout.admin_security()
    configs = {
        "plaintext": (layout.dev_plain_bootstrap, {}),
        "sasl_ssl": (layout.bootstrap, admin.aiokafka()),
    }
    os.environ.update(admin.env())  # the topic admin below
    results: dict[str, dict] = {}
    try:
        spec = load_catalog()[TOPIC]
        print(f"broker Kafka {broker.KAFKA_VERSION}; record {RECORD}")
        print(f"encode only: {encode_only(50_000):,.0f} records/s")
        for name, (bootstrap, security) in configs.items():
            for part in ("rt", "st", "tp", "base"):
                apply_topics(layout.bootstrap, [spec], prefix=f"bench.{name}.{part}.")
            results[name] = await measure(name, bootstrap, security, args)
        if args.sweep:
            await sweep(*configs["sasl_ssl"], spec, args.samples)
    finally:
        broker.stop(layout)
    for name, result in results.items():
        print(json.dumps({"config": name, **result}))


async def measure(name: str, bootstrap: str, security: dict, args: argparse.Namespace) -> dict:
    """Round trip, paced stream and throughput over one connection type, tuned settings."""
    tuned = client_kwargs(True, security)
    prefix = f"bench.{name}."
    rt = await round_trip(bootstrap, prefix + "rt." + TOPIC, args.samples, tuned)
    st = await paced_stream(bootstrap, prefix + "st." + TOPIC, args.samples, tuned, streams=8)
    wall, per_cpu = await throughput(bootstrap, prefix + "tp." + TOPIC, args.throughput, tuned)
    print(
        f"{name:9s} round trip p50 {statistics.median(rt):6.2f} ms p99 {percentile(rt, 0.99):7.2f}"
        f" ms | 8 streams every 5 ms p50 {statistics.median(st):6.2f} ms"
        f" p99 {percentile(st, 0.99):7.2f} ms | encode+produce {wall:,.0f} records/s wall,"
        f" {per_cpu:,.0f} per CPU-second"
    )
    if args.defaults:
        base = client_kwargs(False, security)
        times = await round_trip(bootstrap, prefix + "base." + TOPIC, args.samples, base)
        print(
            f"{name:9s} aiokafka defaults round trip p50 {statistics.median(times):6.2f} ms"
            f" p99 {percentile(times, 0.99):7.2f} ms"
        )
    return {
        "round_trip_p50_ms": round(statistics.median(rt), 3),
        "round_trip_p99_ms": round(percentile(rt, 0.99), 3),
        "stream8_p50_ms": round(statistics.median(st), 3),
        "stream8_p99_ms": round(percentile(st, 0.99), 3),
        "records_per_s": round(wall),
        "records_per_cpu_s": round(per_cpu),
        "samples": len(rt),
    }


async def sweep(bootstrap: str, security: dict, spec, samples: int) -> None:
    """Cocoon's settings with other fetch waits: where the 500 ms default hurts."""
    for wait in (500, 100, 20, 5):
        for isolation in ("read_committed", "read_uncommitted"):
            prefix = f"bench.sweep.{wait}.{isolation[5]}."
            apply_topics(bootstrap, [spec], prefix=prefix)
            clients = client_kwargs(
                True, security, fetch_max_wait_ms=wait, isolation_level=isolation
            )
            rt = await round_trip(bootstrap, prefix + TOPIC, samples, clients)
            st = await paced_stream(bootstrap, prefix + TOPIC, samples, clients, streams=8)
            print(
                f"fetch wait {wait:3d} ms, {isolation:16s}"
                f" round trip p50 {statistics.median(rt):6.2f} p99 {percentile(rt, 0.99):7.2f} ms"
                f" | 8 streams p50 {statistics.median(st):6.2f} p99 {percentile(st, 0.99):7.2f} ms"
            )


if __name__ == "__main__":
    asyncio.run(main())
