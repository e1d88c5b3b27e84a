"""The attestation service on the real broker: evidence in, signed verdicts out, revocations.

Each test gets its own topic prefix (provisioned from the catalog) and runs the service in-process
as an asyncio task; one test runs `cocoon run attestation` as a subprocess and stops it with
SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cocoon.attestation.claims import Claims, Freshness
from cocoon.attestation.collateral import save_bundle
from cocoon.attestation.registry_mirror import CompactedMirror
from cocoon.attestation.registry_topic import publish_registry
from cocoon.attestation.service import AttestationService, Settings
from cocoon.attestation.simtdx import DEFAULT_MEASUREMENTS, SimTdx
from cocoon.attestation.verdicts import ServiceKey
from cocoon.core.bus import BusProducer
from cocoon.core.bus.admin import apply_topics
from cocoon.core.catalog import concrete_topics, default_catalog
from cocoon.core.codec import models
from cocoon.core.crypto import WorkerKeys
from cocoon.core.verdicts import VerdictError, verify_verdict

MODEL = "qwen3-0.6b"
IMAGE = DEFAULT_MEASUREMENTS.image_hash().hex()
MODEL_HASH = hashlib.sha256(MODEL.encode()).hexdigest()
WAIT_S = 10.0


# ---- harness -------------------------------------------------------------------------------


@pytest.fixture
def prefix(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> str:
    p = unique_name("att") + "."
    specs = [s for s in concrete_topics(default_catalog()) if s.name.startswith("attestation.")]
    apply_topics(kafka_bootstrap, specs, prefix=p)
    return p


def settings(bootstrap: str, prefix: str, sim_dir: Path, key: Path, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "topic_prefix": prefix,
        "dev_simtdx": True,
        "simtdx_dir": sim_dir,
        "service_key_file": key,
        "create_service_key": False,
        "verdict_ttl_hours": 2,
        "evidence_group": f"attestation-{uuid.uuid4().hex[:8]}",
        **kw,
    }
    return Settings(**values)


@contextlib.asynccontextmanager
async def running(service: AttestationService) -> AsyncIterator[AttestationService]:
    stopping = asyncio.Event()
    await service.start()
    task = asyncio.ensure_future(service.run(stopping))
    try:
        yield service
    finally:
        stopping.set()
        await asyncio.wait_for(task, 15)
        await service.close()


class Watch:
    """Everything on one topic from its beginning: (key, value model or None)."""

    def __init__(self, bootstrap: str, topic: str, prefix: str) -> None:
        self.mirror = CompactedMirror(bootstrap, topic, prefix=prefix, client_id="test-watch")
        self.seen: list[tuple[str | None, Any]] = []

    async def until(self, pred: Callable[[str | None, Any], bool], within: float = WAIT_S) -> Any:
        deadline = time.monotonic() + within
        checked = 0
        while True:
            for key, value in self.seen[checked:]:
                checked += 1
                if pred(key, value):
                    return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not seen within {within}s; got {self.seen}")
            await self.mirror.poll(lambda k, v: self.seen.append((k, v)), timeout_ms=100)


@contextlib.asynccontextmanager
async def watch(bootstrap: str, topic: str, prefix: str) -> AsyncIterator[Watch]:
    w = Watch(bootstrap, topic, prefix)
    await w.mirror.start()
    try:
        yield w
    finally:
        await w.mirror.stop()


class Worker:
    """A simulated TDX worker: its own keys, claims bound into simulated quotes."""

    def __init__(
        self,
        sim: SimTdx,
        worker_id: str | None = None,
        model: str = MODEL,
        payout_address: str | None = None,
    ) -> None:
        self.sim = sim
        self.id = worker_id or f"w-{uuid.uuid4().hex[:8]}"
        self.keys = WorkerKeys.generate().public
        self.model = model
        self.payout_address = payout_address

    def claims(self, nonce: bytes | None = None, timestamp: int | None = None) -> Claims:
        fresh = (
            Freshness(nonce=nonce) if nonce else Freshness(timestamp=timestamp or int(time.time()))
        )
        k = self.keys
        return Claims(
            k.signing_key,
            k.hpke_x25519,
            k.hpke_mlkem768_x25519,
            self.model,
            fresh,
            self.payout_address,
        )

    def evidence(
        self,
        claims: Claims | None = None,
        *,
        quote: bytes | None = None,
        nonce: bytes | None = None,
    ) -> models.Evidence:
        claims = claims or self.claims(nonce=nonce)
        return models.Evidence(
            evidence_id=f"ev-{uuid.uuid4().hex[:12]}",
            worker_id=self.id,
            claims=claims.encode(),
            tdx_quote=quote if quote is not None else self.sim.quote(claims.report_data()),
            nonce=claims.freshness.nonce,
            collected_at=datetime.now(UTC),
        )


def allow_all(reg: Any) -> None:
    reg.add_image(IMAGE)
    reg.add_model(MODEL, MODEL_HASH)


def verdict_for(evidence: models.Evidence) -> Callable[[str | None, Any], bool]:
    return lambda key, v: v is not None and v.evidence_id == evidence.evidence_id


# ---- tests ---------------------------------------------------------------------------------


async def test_accepted_verdict_is_signed_expires_and_replays_are_rejected(
    kafka_bootstrap: str, prefix: str, sim_dir: Path, service_key: Path
) -> None:
    await publish_registry(kafka_bootstrap, allow_all, prefix=prefix)
    svc = AttestationService(settings(kafka_bootstrap, prefix, sim_dir, service_key))
    pinned = ServiceKey.load(service_key).public
    sim = SimTdx.load_or_create(sim_dir)
    worker = Worker(sim)
    async with (
        running(svc),
        BusProducer(kafka_bootstrap, prefix=prefix) as producer,
        watch(kafka_bootstrap, "attestation.verdicts", prefix) as verdicts,
    ):
        first = worker.evidence()
        await producer.send("attestation.evidence", first)
        v = await verdicts.until(verdict_for(first))
        assert v.status == "TRUSTED", v.reason
        checked = verify_verdict(v, pinned, time.time())
        assert checked.trusted and checked.models == (MODEL,)
        assert checked.signing_key == worker.keys.signing_key
        assert checked.hpke_public_key == worker.keys.hpke_mlkem768_x25519
        assert checked.hpke_x25519 == worker.keys.hpke_x25519
        assert checked.image_hash.hex() == IMAGE and checked.tcb_status == "UpToDate"
        assert 2 * 3600 - 5 <= checked.expires_at - checked.issued_at <= 2 * 3600
        with pytest.raises(VerdictError) as expired:
            verify_verdict(v, pinned, checked.expires_at + 1)
        assert expired.value.code == VerdictError.EXPIRED
        with pytest.raises(VerdictError) as forged:
            verify_verdict(v.model_copy(update={"models": ["other"]}), pinned, time.time())
        assert forged.value.code == VerdictError.BAD_SIGNATURE
        with pytest.raises(VerdictError) as other:
            verify_verdict(v, ServiceKey.generate().public, time.time())
        assert other.value.code == VerdictError.WRONG_KEY

        # The same claims and quote again (new evidence id): a replay.
        again = first.model_copy(update={"evidence_id": "ev-replay-ts"})
        await producer.send("attestation.evidence", again)
        r = await verdicts.until(verdict_for(again))
        assert r.status == "REJECTED" and r.reason.startswith("replay:"), r.reason
        verify_verdict(r, pinned, time.time())  # rejections are signed too

        # The same quote bound to another key: REPORTDATA no longer matches.
        thief = Worker(sim, worker.id)
        stolen = thief.evidence(thief.claims(timestamp=int(time.time())), quote=first.tdx_quote)
        await producer.send("attestation.evidence", stolen)
        r = await verdicts.until(verdict_for(stolen))
        assert r.status == "REJECTED" and r.reason.startswith("report_data"), r.reason

        # Re-attest with the challenge of the first verdict, before its expiry.
        renewed = worker.evidence(nonce=v.challenge)
        await producer.send("attestation.evidence", renewed)
        v2 = await verdicts.until(verdict_for(renewed))
        assert v2.status == "TRUSTED", v2.reason
        assert v2.challenge and v2.challenge != v.challenge

        # The used nonce once more: refused.
        replayed = renewed.model_copy(update={"evidence_id": "ev-replay-nonce"})
        await producer.send("attestation.evidence", replayed)
        r = await verdicts.until(verdict_for(replayed))
        assert r.status == "REJECTED" and "nonce" in r.reason, r.reason

        # Another worker cannot use this worker's challenge.
        other_worker = Worker(sim)
        borrowed = other_worker.evidence(nonce=v2.challenge)
        await producer.send("attestation.evidence", borrowed)
        r = await verdicts.until(verdict_for(borrowed))
        assert r.status == "REJECTED" and "another worker" in r.reason, r.reason


async def test_bad_evidence_is_rejected_with_its_reason(
    kafka_bootstrap: str, prefix: str, sim_dir: Path, service_key: Path
) -> None:
    await publish_registry(kafka_bootstrap, allow_all, prefix=prefix)
    sim = SimTdx.load_or_create(sim_dir)
    worker = Worker(sim)
    async with (
        BusProducer(kafka_bootstrap, prefix=prefix) as producer,
        watch(kafka_bootstrap, "attestation.verdicts", prefix) as verdicts,
    ):
        svc = AttestationService(settings(kafka_bootstrap, prefix, sim_dir, service_key))
        async with running(svc):
            claims = worker.claims()
            flipped = bytearray(claims.report_data())
            flipped[7] ^= 0x01
            bad = worker.evidence(claims, quote=sim.quote(bytes(flipped)))
            await producer.send("attestation.evidence", bad)
            r = await verdicts.until(verdict_for(bad))
            assert r.status == "REJECTED" and r.reason.startswith("report_data"), r.reason
            claims = worker.claims(timestamp=int(time.time()) - 1)
            debug = worker.evidence(claims, quote=sim.quote(claims.report_data(), debug=True))
            await producer.send("attestation.evidence", debug)
            r = await verdicts.until(verdict_for(debug))
            assert r.status == "REJECTED" and "debug" in r.reason.lower(), r.reason

        # The production policy trusts only Intel's root: the simulated quote is refused.
        bundle = sim_dir / "collateral.json"
        save_bundle(bundle, [sim.collateral()])
        prod = settings(
            kafka_bootstrap,
            prefix,
            sim_dir,
            service_key,
            dev_simtdx=False,
            collateral_file=bundle,
        )
        async with running(AttestationService(prod)):
            ev = worker.evidence(worker.claims(timestamp=int(time.time()) + 2))
            await producer.send("attestation.evidence", ev)
            r = await verdicts.until(verdict_for(ev))
            assert r.status == "REJECTED" and "does not trust" in r.reason, r.reason


async def test_registry_removal_revokes_then_tombstones(
    kafka_bootstrap: str, prefix: str, sim_dir: Path, service_key: Path
) -> None:
    def setup(reg: Any) -> None:
        allow_all(reg)
        reg.add_model("other-model", "ab" * 32)

    await publish_registry(kafka_bootstrap, setup, prefix=prefix)
    sim = SimTdx.load_or_create(sim_dir)
    a, b = Worker(sim), Worker(sim, model="other-model")
    svc = AttestationService(settings(kafka_bootstrap, prefix, sim_dir, service_key))
    async with (
        running(svc),
        BusProducer(kafka_bootstrap, prefix=prefix) as producer,
        watch(kafka_bootstrap, "attestation.verdicts", prefix) as verdicts,
    ):
        for w in (a, b):
            ev = w.evidence(w.claims(timestamp=int(time.time())))
            await producer.send("attestation.evidence", ev)
            assert (await verdicts.until(verdict_for(ev))).status == "TRUSTED"

        started = time.monotonic()
        await publish_registry(
            kafka_bootstrap, lambda r: r.remove_model("other-model"), prefix=prefix
        )
        revoked = await verdicts.until(
            lambda k, v: k == b.id and v is not None and v.status == "REVOKED", within=5
        )
        assert "other-model" in revoked.reason
        await verdicts.until(lambda k, v: k == b.id and v is None, within=5)
        await publish_registry(kafka_bootstrap, lambda r: r.remove_image(IMAGE), prefix=prefix)
        revoked = await verdicts.until(
            lambda k, v: k == a.id and v is not None and v.status == "REVOKED", within=5
        )
        assert "image hash" in revoked.reason
        await verdicts.until(lambda k, v: k == a.id and v is None, within=5)
        assert time.monotonic() - started < 5
        assert svc.trusted == {}
        # A's revoked verdict stays revoked: a is no longer trusted for new evidence either.
        ev = a.evidence(a.claims(timestamp=int(time.time()) + 1))
        await producer.send("attestation.evidence", ev)
        r = await verdicts.until(verdict_for(ev))
        assert r.status == "REJECTED" and r.reason.startswith("measurements"), r.reason


async def test_the_attested_payout_address_is_in_the_verdict_and_a_ban_revokes_it(
    kafka_bootstrap: str, prefix: str, sim_dir: Path, service_key: Path
) -> None:
    await publish_registry(kafka_bootstrap, allow_all, prefix=prefix)
    sim = SimTdx.load_or_create(sim_dir)
    address, other = "0:" + "a1" * 32, "-1:" + "b2" * 32
    paid, plain = Worker(sim, payout_address=address), Worker(sim)
    pinned = ServiceKey.load(service_key).public
    svc = AttestationService(settings(kafka_bootstrap, prefix, sim_dir, service_key))
    async with (
        running(svc),
        BusProducer(kafka_bootstrap, prefix=prefix) as producer,
        watch(kafka_bootstrap, "attestation.verdicts", prefix) as verdicts,
    ):
        for w in (paid, plain):
            ev = w.evidence(w.claims(timestamp=int(time.time())))
            await producer.send("attestation.evidence", ev)
            v = verify_verdict(await verdicts.until(verdict_for(ev)), pinned, time.time())
            assert v.trusted and v.payout_address == w.payout_address

        # Banning another address revokes nobody; banning this one revokes its worker only.
        await publish_registry(kafka_bootstrap, lambda r: r.ban_address(other), prefix=prefix)
        await publish_registry(kafka_bootstrap, lambda r: r.ban_address(address), prefix=prefix)
        revoked = await verdicts.until(
            lambda k, v: k == paid.id and v is not None and v.status == "REVOKED", within=5
        )
        assert f"payout_address: {address} is banned" in revoked.reason
        assert set(svc.trusted) == {plain.id}
        # New evidence with the banned address is refused before anything else is checked.
        ev = paid.evidence(paid.claims(timestamp=int(time.time()) + 1))
        await producer.send("attestation.evidence", ev)
        r = await verdicts.until(verdict_for(ev))
        assert r.status == "REJECTED" and "is banned" in r.reason


async def test_garbage_evidence_goes_to_the_dead_letter_topic(
    kafka_bootstrap: str, prefix: str, sim_dir: Path, service_key: Path
) -> None:
    await publish_registry(kafka_bootstrap, allow_all, prefix=prefix)
    worker = Worker(SimTdx.load_or_create(sim_dir))
    svc = AttestationService(settings(kafka_bootstrap, prefix, sim_dir, service_key))
    async with (
        running(svc),
        BusProducer(kafka_bootstrap, prefix=prefix) as producer,
        watch(kafka_bootstrap, "attestation.verdicts", prefix) as verdicts,
        watch(kafka_bootstrap, "attestation.evidence.dlq", prefix) as dlq,
    ):
        await producer.send_raw("attestation.evidence", b"\x00garbage", key=worker.id.encode())
        dead = await dlq.until(lambda k, v: v is not None)
        assert dead.reason == "BAD_MAGIC" and dead.value == b"\x00garbage"
        ev = worker.evidence(worker.claims())
        await producer.send("attestation.evidence", ev)
        assert (await verdicts.until(verdict_for(ev))).status == "TRUSTED"


async def test_restart_keeps_registry_challenges_and_seen_claims(
    kafka_bootstrap: str, prefix: str, sim_dir: Path, service_key: Path
) -> None:
    await publish_registry(kafka_bootstrap, allow_all, prefix=prefix)
    worker = Worker(SimTdx.load_or_create(sim_dir))
    conf = settings(kafka_bootstrap, prefix, sim_dir, service_key)
    async with (
        BusProducer(kafka_bootstrap, prefix=prefix) as producer,
        watch(kafka_bootstrap, "attestation.verdicts", prefix) as verdicts,
    ):
        async with running(AttestationService(conf)):
            first = worker.evidence(worker.claims())
            await producer.send("attestation.evidence", first)
            v = await verdicts.until(verdict_for(first))
            assert v.status == "TRUSTED"

        restarted = AttestationService(conf)
        async with running(restarted):
            assert restarted.registry.version >= 2
            assert IMAGE in restarted.verifier.policy.allowed_image_hashes
            assert worker.id in restarted.trusted
            replay = first.model_copy(update={"evidence_id": "ev-after-restart"})
            await producer.send("attestation.evidence", replay)
            r = await verdicts.until(verdict_for(replay))
            assert r.status == "REJECTED" and r.reason.startswith("replay:"), r.reason
            renewed = worker.evidence(nonce=v.challenge)
            await producer.send("attestation.evidence", renewed)
            v2 = await verdicts.until(verdict_for(renewed))
            assert v2.status == "TRUSTED", v2.reason


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "cocoon.core.runtime", "attestation"], env=env, stderr=err
        )


async def test_cocoon_run_attestation_subprocess(
    kafka_bootstrap: str, prefix: str, sim_dir: Path, tmp_path: Path
) -> None:
    await publish_registry(kafka_bootstrap, allow_all, prefix=prefix)
    key = tmp_path / "key.pem"  # created on first run, public half next to it
    env = {
        **os.environ,
        "COCOON_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "COCOON_TOPIC_PREFIX": prefix,
        "COCOON_DEV_SIMTDX": "true",
        "COCOON_SIMTDX_DIR": str(sim_dir),
        "COCOON_SERVICE_KEY_FILE": str(key),
        "COCOON_GRPC_HEALTH_PORT": "0",
        "COCOON_METRICS_PORT": "0",
        "COCOON_LOG_FORMAT": "human",
    }
    log = tmp_path / "stderr.log"
    proc = await asyncio.to_thread(_spawn, env, log)
    try:
        deadline = time.monotonic() + 30
        while "attestation ready" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        pinned = bytes.fromhex(key.with_suffix(".pub").read_text())
        worker = Worker(SimTdx.load_or_create(sim_dir))
        async with (
            BusProducer(kafka_bootstrap, prefix=prefix) as producer,
            watch(kafka_bootstrap, "attestation.verdicts", prefix) as verdicts,
        ):
            ev = worker.evidence(worker.claims())
            await producer.send("attestation.evidence", ev)
            v = await verdicts.until(verdict_for(ev))
            assert verify_verdict(v, pinned, time.time()).trusted
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
