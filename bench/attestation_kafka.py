"""Evidence-to-verdict latency through Kafka: the attestation service end to end.

    .venv/bin/python bench/attestation_kafka.py [--samples 300] [--bootstrap H:P]

Starts a local broker (unless --bootstrap is given), provisions the attestation topics under a
fresh prefix, allows the simulated image in the registry topic, runs the service in-process and
sends simulated-TDX evidence one at a time. Latency = produce evidence (Avro, acks=all) → the
service consumes it, verifies the quote (dcap-qvl + policy, warm collateral), signs and produces
the verdict → a reader following `attestation.verdicts` has decoded it. Quotes are generated
before timing starts. Several warm-up samples are dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from cocoon.attestation.claims import Claims, Freshness
from cocoon.attestation.registry import Registry
from cocoon.attestation.registry_mirror import CompactedMirror
from cocoon.attestation.registry_topic import publish_registry
from cocoon.attestation.service import AttestationService, Settings
from cocoon.attestation.simtdx import DEFAULT_MEASUREMENTS, SimTdx
from cocoon.core.bus import BusProducer
from cocoon.core.bus.admin import apply_topics
from cocoon.core.catalog import concrete_topics, default_catalog
from cocoon.core.codec import models
from cocoon.core.crypto import WorkerKeys
from cocoon.core.kafka.provider import provide_broker

MODEL = "qwen3-0.6b"
WARMUP = 10


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_evidence(sim: SimTdx, n: int) -> list[models.Evidence]:
    out = []
    for _ in range(n):
        keys = WorkerKeys.generate().public
        claims = Claims(
            keys.signing_key,
            keys.hpke_x25519,
            keys.hpke_mlkem768_x25519,
            MODEL,
            Freshness(timestamp=int(time.time())),
        )
        out.append(
            models.Evidence(
                evidence_id=f"ev-{uuid.uuid4().hex[:12]}",
                worker_id=f"w-{uuid.uuid4().hex[:8]}",
                claims=claims.encode(),
                tdx_quote=sim.quote(claims.report_data()),
                collected_at=datetime.now(UTC),
            )
        )
    return out


def _free_port_pair() -> int:
    """A port p with p and p+1 free (broker and controller listeners)."""
    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free pair of loopback ports")


@contextlib.contextmanager
def broker_at(bootstrap: str | None, home: Path) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    with provide_broker(home, _free_port_pair(), echo=lambda *a, **k: None) as started:
        os.environ.update(started.admin_env())  # this process's clients connect as the admin
        yield started.bootstrap


async def run(bootstrap: str, samples: int, work: Path) -> None:
    prefix = f"bench.att.{uuid.uuid4().hex[:6]}."
    specs = [s for s in concrete_topics(default_catalog()) if s.name.startswith("attestation.")]
    apply_topics(bootstrap, specs, prefix=prefix)

    def allow(reg: Registry) -> None:
        reg.add_image(DEFAULT_MEASUREMENTS.image_hash().hex())
        reg.add_model(MODEL, hashlib.sha256(MODEL.encode()).hexdigest())

    await publish_registry(bootstrap, allow, prefix=prefix)
    sim = SimTdx.load_or_create(work / "simtdx")
    evidence = make_evidence(sim, samples + WARMUP)
    settings = Settings(
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        dev_simtdx=True,
        simtdx_dir=work / "simtdx",
        service_key_file=work / "key.pem",
    )
    service = AttestationService(settings)
    await service.start()
    stopping = asyncio.Event()
    task = asyncio.ensure_future(service.run(stopping))
    arrived: dict[str, float] = {}
    statuses: dict[str, str] = {}
    landed = {ev.evidence_id: asyncio.Event() for ev in evidence}

    def on_verdict(key: str | None, value: models.Verdict | None) -> None:
        if value is not None and value.evidence_id in landed:
            arrived[value.evidence_id] = time.perf_counter()
            statuses[value.evidence_id] = value.status
            landed[value.evidence_id].set()

    latencies: list[float] = []
    async with (
        BusProducer(bootstrap, prefix=prefix) as producer,
        CompactedMirror(bootstrap, "attestation.verdicts", prefix=prefix) as mirror,
    ):
        follow = asyncio.ensure_future(_follow(mirror, on_verdict))
        try:
            for i, ev in enumerate(evidence):
                sent = time.perf_counter()
                await producer.send("attestation.evidence", ev)
                await asyncio.wait_for(landed[ev.evidence_id].wait(), 30)
                if statuses[ev.evidence_id] != "TRUSTED":
                    raise SystemExit(f"unexpected verdict {statuses[ev.evidence_id]}")
                if i >= WARMUP:
                    latencies.append((arrived[ev.evidence_id] - sent) * 1000)
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
    stopping.set()
    await task
    await service.close()
    print(f"evidence -> signed verdict through Kafka, {len(latencies)} samples (one in flight)")
    print(
        f"  p50 {percentile(latencies, 0.5):.2f} ms   p90 {percentile(latencies, 0.9):.2f} ms   "
        f"p99 {percentile(latencies, 0.99):.2f} ms   mean {statistics.mean(latencies):.2f} ms"
    )


async def _follow(mirror: CompactedMirror, handler: object) -> None:
    while True:
        await mirror.poll(handler, timeout_ms=50)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with broker_at(args.bootstrap, work / "kafka") as bootstrap:
            asyncio.run(run(bootstrap, args.samples, work))


if __name__ == "__main__":
    main()
