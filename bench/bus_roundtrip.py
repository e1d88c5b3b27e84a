"""Produce-to-consume round trip and produce throughput through a real local broker.

Runs plaintext and the production shape (TLS + SASL/SCRAM-SHA-512, the authorizer on) side by
side, on the same broker, in one run, and ends with one JSON line per configuration:

    .venv/bin/python bench/bus_roundtrip.py [--samples 2000] [--throughput 100000] [--defaults]

`--defaults` adds aiokafka's library defaults (the baseline of the tuned settings).
`--hops` measures one request-path hop as the services build it instead (see `hop_matrix`).

Round trip = encode (Avro single-object) + produce + broker + fetch + decode, one record in flight
at a time (low load). Throughput = records encoded and produced per second from one process
(one core) with acks=all and idempotence, waiting for every ack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from cocoon.core import codec
from cocoon.core.bus import BusConsumer, BusProducer
from cocoon.core.bus.admin import apply_topics
from cocoon.core.bus.broadcast import BroadcastReader
from cocoon.core.bus.security import KafkaSecurity
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
    parser.add_argument(
        "--hops",
        action="store_true",
        help="only one request-path hop as the services build it, under each variant (TLS+SASL)",
    )
    parser.add_argument("--gap-ms", type=float, default=40.0, help="--hops: idle before a record")
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
    if args.hops:
        try:
            await hop_matrix(layout.bootstrap, admin, args.samples, args.gap_ms)
            for wait in (20, 500, 20, 500):
                client, broker_cpu = await idle_cost(layout, admin, wait)
                load = os.getloadavg()[0]
                print(
                    f"5 idle group readers, fetch wait {wait:3d} ms: {client:4.1f} % of a core in"
                    f" the client, {broker_cpu:4.1f} % in the broker (load {load:.1f})"
                )
                line = {"bench": "bus_idle", "readers": 5, "fetch_max_wait_ms": wait}
                print(
                    json.dumps(
                        line
                        | {
                            "client_pct": round(client, 1),
                            "broker_pct": round(broker_cpu, 1),
                            "load_average": round(load, 1),
                        }
                    )
                )
        finally:
            broker.stop(layout)
        return
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


# The gateway's reply reader: one BroadcastReader over these (5 x 12 partitions).
REPLY_TOPICS = (
    "billing.grants",
    "billing.reservations",
    "inference.assignments",
    "inference.responses",
    "inference.outcomes",
)


@dataclasses.dataclass(frozen=True)
class Hop:
    """One variant of a request-path hop: who writes, who reads and how."""

    name: str
    reader: str  # "group": a BusConsumer (scheduler, worker-proxy); "replies": the gateway's
    isolation: str = "read_committed"
    fetch_max_wait_ms: int = 20
    transactional: bool = False  # the writer commits a Kafka transaction per record (billing)


HOPS = (
    Hop("group reader, read_committed, wait 20 (before)", "group"),
    Hop("group reader, read_committed, wait 500", "group", fetch_max_wait_ms=500),
    Hop(
        "group reader, read_uncommitted, wait 500",
        "group",
        isolation="read_uncommitted",
        fetch_max_wait_ms=500,
    ),
    Hop("gateway replies, read_committed, wait 20 (before)", "replies"),
    Hop("gateway replies, read_committed, wait 500", "replies", fetch_max_wait_ms=500),
    Hop("transactional writer, read_committed, wait 20", "group", transactional=True),
    Hop(
        "transactional writer, read_committed, wait 500",
        "group",
        transactional=True,
        fetch_max_wait_ms=500,
    ),
)


class HopRig:
    """A BusProducer and the services' reader for one `Hop`, started once and timed per record."""

    def __init__(self, bootstrap: str, security: KafkaSecurity, hop: Hop) -> None:
        self.hop = hop
        self.bootstrap = bootstrap
        self.prefix = f"bench.hop.{uuid.uuid4().hex[:6]}."
        settings = dataclasses.replace(
            ConsumerSettings(),
            isolation_level=hop.isolation,
            fetch_max_wait_ms=hop.fetch_max_wait_ms,
        )
        self.arrived: dict[str, float] = {}
        self.signal = asyncio.Event()
        self.reader: BusConsumer | BroadcastReader
        if hop.reader == "group":
            self.reader = BusConsumer(
                bootstrap,
                [TOPIC],
                group_id=f"bench-hop-{uuid.uuid4().hex[:6]}",
                handler=self._on_message,
                prefix=self.prefix,
                settings=settings,
                security=security,
            )
        else:
            self.reader = BroadcastReader(
                bootstrap,
                REPLY_TOPICS,
                lambda record: self._seen(record.value),
                from_beginning=True,
                prefix=self.prefix,
                settings=settings,
                security=security,
            )
        transactional_id = f"bench-hop-{uuid.uuid4().hex[:6]}" if hop.transactional else None
        self.producer = BusProducer(
            bootstrap, prefix=self.prefix, security=security, transactional_id=transactional_id
        )
        self.times: list[float] = []
        self.acks: list[float] = []

    def _seen(self, value: dict | None) -> None:
        if value is not None:
            self.arrived[value["request_id"]] = time.perf_counter()
            self.signal.set()

    async def _on_message(self, message) -> None:
        self._seen(message.data)

    async def start(self) -> None:
        apply_topics(self.bootstrap, [load_catalog()[t] for t in REPLY_TOPICS], prefix=self.prefix)
        await self.producer.start()
        await self.reader.start()
        self.running = asyncio.create_task(self.reader.run())
        await self.once(0, keep=False)  # joins the group, warms the connections

    async def once(self, seq: int, *, keep: bool = True) -> None:
        value = chunk(seq)
        self.signal.clear()
        started = time.perf_counter()
        if self.hop.transactional:
            async with self.producer.kafka.transaction():
                await self.producer.send(TOPIC, value)
        else:
            await self.producer.send(TOPIC, value)
        acked = time.perf_counter()
        while value["request_id"] not in self.arrived:
            await asyncio.wait_for(self.signal.wait(), 60)
            self.signal.clear()
        if keep:
            self.times.append((self.arrived[value["request_id"]] - started) * 1000)
            self.acks.append((acked - started) * 1000)

    async def stop(self) -> None:
        self.running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.running
        await self.reader.stop()
        await self.producer.stop()


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def idle_cost(
    layout: broker.BrokerLayout, security: KafkaSecurity, wait_ms: int, readers: int = 5
) -> tuple[float, float]:
    """(client %, broker %) of a core that `readers` idle group readers cost at this fetch wait:
    each empty fetch is a TLS round trip and a wake-up on both ends."""
    prefix = f"bench.idle.{uuid.uuid4().hex[:6]}."
    apply_topics(layout.bootstrap, [load_catalog()[TOPIC]], prefix=prefix)
    settings = dataclasses.replace(ConsumerSettings(), fetch_max_wait_ms=wait_ms)

    async def ignore(_message) -> None:
        return None

    consumers = [
        BusConsumer(
            layout.bootstrap,
            [TOPIC],
            group_id=f"bench-idle-{uuid.uuid4().hex[:6]}",
            handler=ignore,
            prefix=prefix,
            settings=settings,
            security=security,
        )
        for _ in range(readers)
    ]
    for consumer in consumers:
        await consumer.start()
    tasks = [asyncio.create_task(consumer.run()) for consumer in consumers]
    try:
        await asyncio.sleep(3)  # groups formed, fetches steady
        broker_pid = int(layout.pid_file.read_text().strip())
        client0, broker0, wall0 = time.process_time(), process_cpu_s(broker_pid), time.time()
        await asyncio.sleep(10)
        wall = time.time() - wall0
        client = (time.process_time() - client0) / wall * 100
        return client, (process_cpu_s(broker_pid) - broker0) / wall * 100
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for consumer in consumers:
            await consumer.stop()


async def hop_matrix(bootstrap: str, security: KafkaSecurity, samples: int, gap_ms: float) -> None:
    """Every variant of `HOPS` side by side over TLS + SASL/SCRAM, as the services connect.

    All variants run at once and take turns in a random order, one record each, so a change in
    the machine's load hits them alike. Before each record the writer idles a random 0..gap_ms,
    so the record lands at a random point of the reader's waiting fetch, as a request's records
    do (not right behind the reader's previous fetch, as in a ping-pong)."""
    rigs = [HopRig(bootstrap, security, hop) for hop in HOPS]
    for rig in rigs:
        await rig.start()
    loads = []
    try:
        for seq in range(1, samples + 11):
            for rig in random.sample(rigs, len(rigs)):
                await asyncio.sleep(random.uniform(0, gap_ms) / 1000)
                await rig.once(seq, keep=seq > 10)
            loads.append(os.getloadavg()[0])
    finally:
        for rig in rigs:
            await rig.stop()
    load = f"{min(loads):.1f}-{max(loads):.1f}"
    print(f"one hop, BusProducer -> reader, idle 0..{gap_ms:.0f} ms before each; load {load}")
    lines = []
    for rig in rigs:
        times, acks = rig.times, rig.acks
        print(
            f"{rig.hop.name:58s} p50 {statistics.median(times):6.2f}"
            f" p90 {percentile(times, 0.9):6.2f} p99 {percentile(times, 0.99):6.2f} ms"
            f" (of which the writer's ack p50 {statistics.median(acks):5.2f})"
        )
        lines.append(
            {
                "bench": "bus_hop",
                "hop": rig.hop.name,
                "hop_p50_ms": round(statistics.median(times), 2),
                "hop_p90_ms": round(percentile(times, 0.9), 2),
                "hop_p99_ms": round(percentile(times, 0.99), 2),
                "ack_p50_ms": round(statistics.median(acks), 2),
                "samples": len(times),
                "load_average": load,
            }
        )
    for line in lines:
        print(json.dumps(line))


if __name__ == "__main__":
    asyncio.run(main())
