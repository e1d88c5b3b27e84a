"""Faust's changelog-backed tables on our broker: how long an instance takes to own a dead
one's state (issue 14 asks to measure this before relying on Faust for the scheduler).

    .venv/bin/python bench/faust_recovery.py [--keys 0,10000,100000] [--partitions 12]

On a private broker (secured as production's: SASL/SCRAM over TLS, as its admin), per N keys,
the state a scheduler would own (one ~200-byte lease per request id) is kept three ways:

* `faust_cold`: a Faust worker (faust-streaming, in-memory store, the table co-partitioned with
  its source topic) takes N leases into its table, is SIGKILLed, and a new worker process starts:
  timed from the new process's start to the first event it processes after recovering the
  table from its changelog (Faust holds every stream back until its tables are recovered).
* `faust_standby`: two workers with `table_standby_replicas=1` share the N leases; one is
  SIGKILLed: timed from the kill to the survivor processing an event on every partition the dead
  one owned (the session timeout, the rebalance, the standby's promotion).
* `changelog_read`: what the scheduler's own code would do instead: read a compacted topic of N
  records from the beginning to its end with a plain aiokafka consumer (one process already
  running: no group, no rebalance; add the session timeout for a takeover).

Process start (Python, imports, joining the group) is part of both Faust figures; N=0 shows it.
The output ends with one JSON line per (mode, keys).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

APP_ENV = "BENCH_FAUST_APP"  # set for a worker process: the app's id
MARKS_ENV = "BENCH_FAUST_MARKS"  # where a worker notes each marker it processed
STANDBY_ENV = "BENCH_FAUST_STANDBY"
PARTITIONS_ENV = "BENCH_FAUST_PARTITIONS"
SESSION_TIMEOUT_S = 10.0
SOURCE_SUFFIX = "-in"  # the app's source topic: <app id>-in
TABLE = "leases"
MARKER = b"marker"
LEASE = json.dumps(
    {
        "worker_id": "w-" + "0" * 30,
        "assignment_id": "a-" + "0" * 30,
        "attempt": 1,
        "first_chunk_by_ms": 1_765_000_000_000,
        "expires_at_ms": 1_765_000_010_000,
        "slots": 1,
    }
).encode()


# -- the Faust worker (this file, run as a subprocess) ------------------------------------------
def run_worker() -> None:
    import faust

    from cocoon.core.bus.security import SASL_MECHANISM, KafkaSecurity

    security = KafkaSecurity.from_env()
    partitions = int(os.environ[PARTITIONS_ENV])
    app = faust.App(
        os.environ[APP_ENV],
        broker=f"kafka://{os.environ['COCOON_KAFKA_BOOTSTRAP']}",
        broker_credentials=faust.SASLCredentials(
            username=security.username,
            password=security.password,
            ssl_context=security.ssl_context(),
            mechanism=SASL_MECHANISM,
        ),
        store="memory://",
        topic_partitions=partitions,
        table_standby_replicas=int(os.environ[STANDBY_ENV]),
        web_enabled=False,
        # As our own consumers (aiokafka's default), not Faust's 60 s: a dead member's partitions
        # wait this long before anyone else may take them.
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=SESSION_TIMEOUT_S / 3,
        key_serializer="raw",  # the leases are bytes, as our own records would be (Avro)
        value_serializer="raw",
        datadir=str(Path(os.environ[MARKS_ENV]).with_suffix(".data")),
    )
    source = app.topic(
        os.environ[APP_ENV] + SOURCE_SUFFIX,
        value_type=bytes,
        partitions=partitions,
    )
    table = app.Table(TABLE, default=None, partitions=partitions, key_type=bytes, value_type=bytes)
    marks = Path(os.environ[MARKS_ENV])

    @app.agent(source)
    async def keep(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            if event.value == MARKER:
                note_marker(marks, event.message.partition)
            else:
                table[event.key] = event.value

    sys.argv = [sys.argv[0], "worker", "--without-web", "-l", "warn"]
    app.main()


def note_marker(marks: Path, partition: int) -> None:
    with marks.open("a") as out:
        out.write(f"{partition} {time.time()}\n")


# -- the bench ---------------------------------------------------------------------------------
class Worker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.started = time.time()
        with log.open("a") as out:
            self.process = subprocess.Popen(
                [sys.executable, __file__], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self) -> float:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        return time.time()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def marks_after(path: Path, since: float) -> dict[int, float]:
    """partition -> first time a worker processed a marker there after `since`."""
    seen: dict[int, float] = {}
    if path.exists():
        for line in path.read_text().split("\n"):
            if line:
                partition, at = line.split()
                if float(at) >= since:
                    seen.setdefault(int(partition), float(at))
    return seen


async def send(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, int | None]]) -> None:
    """(key, value, partition or None for the key's) records, through one producer."""
    from aiokafka import AIOKafkaProducer

    from cocoon.core.bus.security import aiokafka_security

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, **aiokafka_security())
    await producer.start()
    try:
        sent = [
            await producer.send(topic, value, key=key, partition=partition)
            for key, value, partition in records
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def markers(bootstrap: str, topic: str, partitions: list[int]) -> None:
    """One marker to each of `partitions`, in one producer's session."""
    await send(bootstrap, topic, [(b"mark", MARKER, partition) for partition in partitions])


async def end_total(consumer, topic: str, partitions: int) -> int:  # type: ignore[no-untyped-def]
    from aiokafka import TopicPartition

    tps = [TopicPartition(topic, p) for p in range(partitions)]
    return sum((await consumer.end_offsets(tps)).values())


@contextlib.asynccontextmanager
async def offsets_reader(bootstrap: str):  # type: ignore[no-untyped-def]
    from aiokafka import AIOKafkaConsumer

    from cocoon.core.bus.security import aiokafka_security

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **aiokafka_security())
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def wait_until(what: str, probe, timeout_s: float = 600) -> None:  # type: ignore[no-untyped-def]
    began = time.monotonic()
    while not await probe():
        if time.monotonic() > began + timeout_s:
            raise TimeoutError(what)
        await asyncio.sleep(0.2)
    print(f"  {what}: {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)


def leases(n: int) -> list[tuple[bytes, bytes, int | None]]:
    return [(f"req-{i:09d}".encode(), LEASE, None) for i in range(n)]


async def faust_case(
    bootstrap: str, n: int, partitions: int, standby: bool, home: Path
) -> dict[str, float]:
    app_id = f"bench-faust-{uuid.uuid4().hex[:8]}"
    marks = home / f"{app_id}.marks"
    env = {
        **os.environ,
        APP_ENV: app_id,
        MARKS_ENV: str(marks),
        STANDBY_ENV: "1" if standby else "0",
        PARTITIONS_ENV: str(partitions),
    }
    changelog = f"{app_id}-{TABLE}-changelog"
    source = app_id + SOURCE_SUFFIX
    await create_topic(bootstrap, source, partitions, compact=False)
    every = list(range(partitions))
    first = Worker(env, home / f"{app_id}-a.log")
    workers = [first]
    try:
        # The first worker is up once it processed a marker on every partition.
        start = time.time()
        await wait_until(
            "first worker up",
            lambda: _marked(bootstrap, source, marks, start, every),
            timeout_s=300,
        )
        if standby:
            second = Worker(env, home / f"{app_id}-b.log")
            workers.append(second)
        await send(bootstrap, source, leases(n))
        if n:
            async with offsets_reader(bootstrap) as reader:

                async def stored() -> bool:
                    return await end_total(reader, changelog, partitions) >= n

                await wait_until("the changelog", stored)
        if standby:
            # Both members own partitions: give the group time to settle, then kill the first.
            await asyncio.sleep(15)
            killed = first.kill()
            await wait_until(
                "survivor owns every partition",
                lambda: _marked(bootstrap, source, marks, killed, every),
            )
            seen = marks_after(marks, killed)
            return {"seconds": max(seen.values()) - killed}
        first.kill()
        replacement = Worker(env, home / f"{app_id}-c.log")
        workers.append(replacement)
        await wait_until(
            "replacement recovered",
            lambda: _marked(bootstrap, source, marks, replacement.started, every),
        )
        seen = marks_after(marks, replacement.started)
        return {"seconds": max(seen.values()) - replacement.started}
    finally:
        for worker in workers:
            worker.stop()


async def _marked(
    bootstrap: str, source: str, marks: Path, since: float, partitions: list[int]
) -> bool:
    """Send a marker to every partition not yet marked since `since`; True once all are."""
    missing = [p for p in partitions if p not in marks_after(marks, since)]
    if missing:
        await markers(bootstrap, source, missing)
        await asyncio.sleep(0.5)
    return not missing


async def create_topic(bootstrap: str, topic: str, partitions: int, compact: bool) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from cocoon.core.bus.security import aiokafka_security

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **aiokafka_security())
    await admin.start()
    try:
        config = {"cleanup.policy": "compact"} if compact else {}
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=config)])
    finally:
        await admin.close()


async def changelog_read(bootstrap: str, n: int, partitions: int) -> dict[str, float]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from cocoon.core.bus.security import aiokafka_security

    topic = f"bench-leases-{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic, partitions, compact=True)
    await send(bootstrap, topic, leases(n))
    started = time.perf_counter()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **aiokafka_security())
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        state: dict[bytes, bytes] = {}
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=200)
            for records in batch.values():
                for record in records:
                    state[record.key] = record.value
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    assert len(state) == n
    return {"seconds": time.perf_counter() - started}


async def bench(bootstrap: str, keys: list[int], partitions: int, home: Path) -> list[dict]:
    lines = []
    for n in keys:
        for mode in ("changelog_read", "faust_cold", "faust_standby"):
            if mode == "changelog_read":
                result = await changelog_read(bootstrap, n, partitions)
            else:
                result = await faust_case(bootstrap, n, partitions, mode == "faust_standby", home)
            line = {
                "bench": "faust_recovery",
                "mode": mode,
                "keys": n,
                "partitions": partitions,
                "seconds": round(result["seconds"], 2),
                "load_average": round(os.getloadavg()[0], 1),
            }
            print(json.dumps(line), flush=True)
            lines.append(line)
    return lines


def main() -> None:
    if os.environ.get(APP_ENV):
        run_worker()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", default="0,10000,100000")
    parser.add_argument("--partitions", type=int, default=12)
    args = parser.parse_args()
    from cocoon.core.kafka import broker

    home = Path(tempfile.mkdtemp(prefix="cocoon-bench-faust-"))
    port = broker.free_port_pair()
    layout = broker.BrokerLayout(home=home / "kafka", port=port, controller_port=port + 1)
    bootstrap = broker.start(layout, echo=lambda _m: None)
    os.environ.update(layout.admin_security().env())
    os.environ["COCOON_KAFKA_BOOTSTRAP"] = bootstrap
    try:
        keys = [int(k) for k in args.keys.split(",")]
        lines = asyncio.run(bench(bootstrap, keys, args.partitions, home))
    finally:
        broker.stop(layout)
    print()
    for line in lines:
        print(json.dumps(line))


if __name__ == "__main__":
    main()
