"""Receipts captured per second by the billing *service*: Kafka in, Kafka transactions out.

    .venv/bin/python bench/billing_kafka.py [--receipts 20000] [--trace-ratio 0.01]
        [--verify-threads 1,2]

Where bench/billing_receipts.py times the domain engine alone, this times the whole service as
it runs in the network: billing as its own process (`python -m cocoon.core.runtime billing`)
on a private local broker. Setup (not timed): verdicts for 8 workers signed by an attestation
key the service pins, one funded client, N requests held (N reservations read back). Timed:
N pre-signed receipts produced at once; the clock stops when billing's consumer group has
committed every one of them, which it does only in the Kafka transaction that also writes
their ledger entries (3 LedgerEntry records per charge) and the balances. Then the ledger is
read back and must hold exactly N charges.

`--verify-threads` runs the service once per value, one after the other on the same broker
(fresh topics each): 1 verifies every signature inline, as the service did before signatures
were checked ahead on several threads; that run is the baseline. Each row also gives the CPU
time billing's process used during the timed part, per receipt (from /proc, so Linux only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from cocoon.attestation.verdicts import ServiceKey
from cocoon.billing.stream_replay import read_ledger
from cocoon.core.bus import BusProducer
from cocoon.core.bus.admin import apply_topics
from cocoon.core.bus.broadcast import BroadcastReader
from cocoon.core.bus.security import aiokafka_security
from cocoon.core.catalog import dead_letter_spec, load_catalog
from cocoon.core.codec import models
from cocoon.core.crypto.keys import WorkerKeys
from cocoon.core.crypto.receipts import UsageReceipt, sign_receipt
from cocoon.core.kafka import broker
from cocoon.core.request_ids import co_partitioned_id

TOPICS = [
    "inference.requests",
    "inference.assignments",
    "usage.receipts",
    "inference.outcomes",
    "attestation.verdicts",
    "attestation.registry",
    "billing.reservations",
    "billing.grants",
    "billing.ledger",
    "billing.balances",
    "billing.snapshots",
]
WORKERS = 8
GROUP = "billing-bench"
MODEL = "bench-model"
ACCOUNT = "acct-bench"


def verdict(key: ServiceKey, worker_id: str, keys: WorkerKeys) -> models.Verdict:
    now = int(time.time() * 1000)
    return key.sign(
        {
            "verdict_id": f"vd-{uuid.uuid4().hex}",
            "worker_id": worker_id,
            "evidence_id": None,
            "registry_version": 1,
            "issued_at": now,
            "expires_at": now + 3_600_000,
            "models": [MODEL],
            "status": "TRUSTED",
            "reason": None,
            "image_hash": None,
            "signing_key": keys.public.signing_key,
            "hpke_public_key": keys.public.hpke_mlkem768_x25519,
            "hpke_suite": "mlkem768-x25519",
            "hpke_x25519": keys.public.hpke_x25519,
            "tcb_status": None,
            "report_data": None,
            "measurements": None,
            "challenge": None,
        }
    )


def request(rid: str, now_ms: int) -> models.InferenceRequest:
    return models.InferenceRequest(
        request_id=rid,
        account_id=ACCOUNT,
        model=MODEL,
        max_tokens=512,
        prompt_bytes=2048,
        max_coefficient=1000,
        stream=True,
        channel="HTTP",
        gateway_id="gw-bench",
        created_at=now_ms,
        deadline_at=now_ms + 3_600_000,
    )


def receipt(keys: WorkerKeys, rid: str, worker_id: str) -> dict:
    now = int(time.time() * 1000)
    body = UsageReceipt(receipt_id=f"{rid}:1", request_id=rid, attempt=1, worker_id=worker_id,
                        model=MODEL, prompt_tokens=900, cached_prompt_tokens=300,
                        completion_tokens=256, reasoning_tokens=64, coefficient=1000,
                        completed=True, started_at=now - 500, finished_at=now)  # fmt: skip
    return sign_receipt(keys, body).to_record()


async def receipts_lag(bootstrap: str, prefix: str) -> int:
    """Receipts billing has not yet committed (it commits only with their ledger entries)."""
    topic = prefix + "usage.receipts"
    parts = [TopicPartition(topic, p) for p in range(load_catalog()["usage.receipts"].partitions)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **aiokafka_security())
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **aiokafka_security())
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(GROUP)
        ends = await consumer.end_offsets(parts)
    finally:
        await consumer.stop()
        await admin.close()
    return sum(end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items())


def billing_env(
    bootstrap: str,
    prefix: str,
    key_file: Path,
    trace_ratio: float | None,
    batch: int | None,
    verify_threads: int,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COCOON_", "OTEL_"))}
    if batch is not None:
        env["COCOON_MAX_BATCH_RECORDS"] = str(batch)
    env["COCOON_VERIFY_THREADS"] = str(verify_threads)
    if trace_ratio is not None:  # the SDK's standard sampler settings, as a deployment sets them
        env.update(OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                   OTEL_TRACES_SAMPLER_ARG=str(trace_ratio))  # fmt: skip
    env.update(
        COCOON_KAFKA_BOOTSTRAP=bootstrap,
        COCOON_TOPIC_PREFIX=prefix,
        COCOON_ATTESTATION_PUBLIC_KEY_FILE=str(key_file),
        COCOON_DEV_GRANTS=f"{ACCOUNT}={10**17}",
        COCOON_CONSUMER_GROUP=GROUP,
        COCOON_TRANSACTIONAL_ID="billing-bench-tx",
        COCOON_GRPC_HEALTH_PORT="0",
        COCOON_METRICS_PORT="0",
        COCOON_LOG_LEVEL="WARNING",
    )
    return env


async def run(
    bootstrap: str, prefix: str, n: int, attestation: ServiceKey, billing: subprocess.Popen
) -> float:
    workers = {f"w-{i}": WorkerKeys.generate() for i in range(WORKERS)}
    died = "billing exited; see its log"
    held: set[str] = set()
    reservations = BroadcastReader(
        bootstrap,
        ["billing.reservations"],
        lambda r: held.add(r.key) if r.value and r.value["status"] == "HELD" else None,
        from_beginning=True,
        prefix=prefix,
        client_id="bench-reservations",
    )
    await reservations.start()
    reading = asyncio.create_task(reservations.run())
    try:
        async with BusProducer(bootstrap, client_id="bench", prefix=prefix) as producer:
            for worker_id, keys in workers.items():
                await producer.send("attestation.verdicts", verdict(attestation, worker_id, keys))
            rids = [co_partitioned_id(f"req-{i:08d}", ACCOUNT) for i in range(n)]
            now = int(time.time() * 1000)
            sends = [await producer.send("inference.requests", request(r, now), wait=False)
                     for r in rids]  # fmt: skip
            await asyncio.gather(*sends)
            deadline = time.monotonic() + 600
            while len(held) < n:
                assert billing.poll() is None, died
                assert time.monotonic() < deadline, f"only {len(held)} of {n} held"
                await asyncio.sleep(0.2)
            names = sorted(workers)
            signed = [receipt(workers[names[i % WORKERS]], r, names[i % WORKERS])
                      for i, r in enumerate(rids)]  # fmt: skip

            start, cpu = time.perf_counter(), time.process_time()
            billing_cpu = cpu_seconds(billing.pid)
            sends = [await producer.send("usage.receipts", rec, wait=False) for rec in signed]
            await asyncio.gather(*sends)
            produced = time.perf_counter() - start
            while await receipts_lag(bootstrap, prefix) > 0:
                assert billing.poll() is None, died
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - start
            bench_cpu = time.process_time() - cpu
            billing_cpu = cpu_seconds(billing.pid) - billing_cpu
    finally:
        reading.cancel()
        await reservations.stop()
    entries = await read_ledger(bootstrap, prefix=prefix)
    charges = sum(1 for e in entries if e.kind == "charge")
    assert charges == n, f"{charges} charges for {n} receipts"
    print(f"{n} receipts through the billing service on Kafka (8 workers, 1 client)")
    print(f"  produced in {produced:.2f} s by this process ({bench_cpu:.1f} CPU-s here)")
    print(f"  all committed (ledger + balances + offsets) after {elapsed:.2f} s:"
          f" {n / elapsed:,.0f} receipts/s")  # fmt: skip
    print(f"  billing used {billing_cpu:.1f} CPU-s: {billing_cpu / n * 1e6:.0f} us per receipt")
    print(f"  ledger read back: {charges} charges, {len(entries)} entries")
    return n / elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--receipts", type=int, default=20_000)
    parser.add_argument(
        "--trace-ratio", type=float, default=None, help="sample this share of traces (default: all)"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="COCOON_MAX_BATCH_RECORDS (default: the service's)"
    )
    parser.add_argument(
        "--verify-threads",
        default="1,2",
        help="comma-separated COCOON_VERIFY_THREADS values, one run each (default: 1,2)",
    )
    args = parser.parse_args()
    threads = [int(value) for value in args.verify_threads.split(",")]
    home = Path(tempfile.mkdtemp(prefix="cocoon-bench-billing-"))
    port = broker.free_port_pair()
    layout = broker.BrokerLayout(home=home / "kafka", port=port, controller_port=port + 1)
    bootstrap = broker.start(layout)
    # The broker is secured as production's: connect as its admin (docs/security.md).
    os.environ.update(layout.admin_security().env())
    rates: dict[int, float] = {}
    try:
        for count in threads:
            print(f"COCOON_VERIFY_THREADS={count}:")
            rates[count] = one_run(bootstrap, home, args, count)
        sampled = "every trace" if args.trace_ratio is None else f"{args.trace_ratio:g} of traces"
        print(f"billing sampled {sampled}; its logs: {home}/billing-*.log")
        print("receipts/s by verify threads: "
              + ", ".join(f"{t}: {r:,.0f}" for t, r in rates.items()))  # fmt: skip
    finally:
        broker.stop(layout)


def one_run(bootstrap: str, home: Path, args: argparse.Namespace, verify_threads: int) -> float:
    """One billing process on fresh topics; its receipts per second."""
    prefix = f"bench.billing.{uuid.uuid4().hex[:6]}."
    catalog = load_catalog()
    specs = [catalog[t] for t in TOPICS]
    apply_topics(bootstrap, specs + [dead_letter_spec(s) for s in specs], prefix=prefix)
    attestation = ServiceKey.generate()
    key_file = home / "attestation.pub"
    key_file.write_text(attestation.public.hex())
    env = billing_env(bootstrap, prefix, key_file, args.trace_ratio, args.batch, verify_threads)
    with open(home / f"billing-{verify_threads}.log", "w") as log:
        billing = subprocess.Popen(
            [sys.executable, "-m", "cocoon.core.runtime", "billing"],
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            return asyncio.run(run(bootstrap, prefix, args.receipts, attestation, billing))
        finally:
            billing.terminate()
            billing.wait(30)


if __name__ == "__main__":
    main()
