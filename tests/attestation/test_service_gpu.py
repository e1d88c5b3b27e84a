"""GPU evidence through the attestation service on the real broker, and the registry's GPU
requirement (`cocoon registry require-gpu / no-require-gpu`) with its revocations.

The positive case uses the synthetic P-384 chain (gpu_synth.py): only it can sign a report over
`gpu_nonce(claims)` for fresh claims. The real H100 sample goes through the same path and is
refused at its nonce, which it cannot be re-bound to.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from support.gpu_synth import World, make_world
from test_service import MODEL, Worker, allow_all, running, settings, verdict_for, watch
from typer.testing import CliRunner

from cocoon.attestation.cli import registry_app
from cocoon.attestation.gpu.verify import GpuEvidence, gpu_nonce
from cocoon.attestation.registry_topic import publish_registry, read_registry
from cocoon.attestation.service import AttestationService
from cocoon.attestation.simtdx import SimTdx
from cocoon.attestation.verdicts import ServiceKey
from cocoon.core.bus import BusProducer
from cocoon.core.bus.admin import apply_topics
from cocoon.core.catalog import concrete_topics, default_catalog
from cocoon.core.codec import models
from cocoon.core.verdicts import verify_verdict

GPU_MODEL = "llama-70b-cc"
NVTRUST = Path(__file__).parent / "data" / "gpu" / "nvtrust"
HOPPER = bytes.fromhex((NVTRUST / "hopperAttestationReport.txt").read_text().strip())
HOPPER_CHAIN = (NVTRUST / "hopperCertChain.txt").read_bytes()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("gpu-rims"))


@pytest.fixture(scope="module")
def gpu_policy_file(world: World) -> Path:
    """The synthetic world as a settings policy file: offline RIMs and OCSP, explicit root."""
    d = world.rim_dir.parent / f"{world.rim_dir.name}-policy"
    d.mkdir()
    for name in ("device", "ca"):
        (d / f"{name}.ocsp").write_bytes(world.ocsp(name))
    root_der = world.anchor.der
    doc = {
        "name": "synthetic",
        "trusted_roots": [
            {
                "name": world.anchor.name,
                "sha256": hashlib.sha256(root_der).hexdigest(),
                "pem": world.certs["root"].public_bytes(Encoding.PEM).decode(),
            }
        ],
        "rim": {"dir": str(world.rim_dir)},
        "ocsp": {"files": ["device.ocsp", "ca.ocsp"]},
    }
    path = d / "gpu-policy.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def prefix(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> str:
    p = unique_name("attgpu") + "."
    specs = [s for s in concrete_topics(default_catalog()) if s.name.startswith("attestation.")]
    apply_topics(kafka_bootstrap, specs, prefix=p)
    return p


def with_gpu(ev: models.Evidence, blob: bytes) -> models.Evidence:
    return ev.model_copy(update={"gpu_evidence": blob})


def gpu_bound(worker: Worker, world: World) -> models.Evidence:
    """Evidence whose GPU report is signed over gpu_nonce(these claims)."""
    claims = worker.claims()
    return with_gpu(worker.evidence(claims), world.evidence(gpu_nonce(claims)).encode())


async def test_gpu_requirement_decides_and_revokes(
    kafka_bootstrap: str,
    prefix: str,
    sim_dir: Path,
    service_key: Path,
    world: World,
    gpu_policy_file: Path,
) -> None:
    def setup(reg: Any) -> None:
        allow_all(reg)
        reg.add_model(GPU_MODEL, "ab" * 32)
        reg.require_gpu(GPU_MODEL)

    await publish_registry(kafka_bootstrap, setup, prefix=prefix)
    conf = settings(kafka_bootstrap, prefix, sim_dir, service_key, gpu_policy_file=gpu_policy_file)
    pinned = ServiceKey.load(service_key).public
    sim = SimTdx.load_or_create(sim_dir)
    runner = CliRunner()
    kafka = ["--bootstrap", kafka_bootstrap, "--prefix", prefix]

    def cli(*args: str) -> str:
        result = runner.invoke(registry_app, [*args, *kafka])
        assert result.exit_code == 0, result.output
        return result.output

    svc = AttestationService(conf)
    async with (
        running(svc),
        BusProducer(kafka_bootstrap, prefix=prefix) as producer,
        watch(kafka_bootstrap, "attestation.verdicts", prefix) as verdicts,
    ):

        async def judged(ev: models.Evidence) -> Any:
            await producer.send("attestation.evidence", ev)
            return await verdicts.until(verdict_for(ev))

        # A model that requires a GPU: no GPU evidence → REJECTED.
        g0 = Worker(sim, model=GPU_MODEL)
        r = await judged(g0.evidence(g0.claims()))
        assert r.status == "REJECTED" and r.reason.startswith("gpu_cc:"), r.reason
        assert "requires a GPU in CC mode" in r.reason and "no GPU evidence" in r.reason
        verify_verdict(r, pinned, time.time())

        # GPU evidence bound to gpu_nonce(claims) → TRUSTED.
        g1 = Worker(sim, model=GPU_MODEL)
        v = await judged(gpu_bound(g1, world))
        assert v.status == "TRUSTED", v.reason
        assert verify_verdict(v, pinned, time.time()).models == (GPU_MODEL,)

        # GPU evidence bound to other claims (same GPU, other keys) → REJECTED at the nonce.
        g2 = Worker(sim, model=GPU_MODEL)
        stolen = with_gpu(g2.evidence(g2.claims()), world.evidence(os.urandom(32)).encode())
        r = await judged(stolen)
        assert r.status == "REJECTED" and "GPU evidence rejected at nonce" in r.reason, r.reason

        # The real H100 sample: a genuine report, but over another nonce.
        g3 = Worker(sim, model=GPU_MODEL)
        real = GpuEvidence(HOPPER, HOPPER_CHAIN).encode()
        r = await judged(with_gpu(g3.evidence(g3.claims()), real))
        assert r.status == "REJECTED" and "rejected at nonce" in r.reason, r.reason
        assert "931d8dd0add203ac" in r.reason

        # Bytes that are not a cocoon/gpu-evidence/v1 container.
        r = await judged(with_gpu(g3.evidence(g3.claims()), b"not a container"))
        assert r.status == "REJECTED" and "malformed GPU evidence container" in r.reason

        # A model with no requirement: GPU evidence optional, but if presented it must verify.
        p0, p1, p2 = (Worker(sim) for _ in range(3))
        assert (await judged(p0.evidence(p0.claims()))).status == "TRUSTED"
        assert (await judged(gpu_bound(p1, world))).status == "TRUSTED"
        bad = with_gpu(p2.evidence(p2.claims()), world.evidence(os.urandom(32)).encode())
        r = await judged(bad)
        assert r.status == "REJECTED", r.reason
        assert r.reason.startswith("gpu_cc: GPU evidence rejected at nonce"), r.reason

        # The registry now requires a GPU for MODEL: p0 (no GPU evidence) is revoked at once
        # and tombstoned; p1 (GPU verified) and g1 (another model) stay trusted.
        started = time.monotonic()
        out = await asyncio.to_thread(cli, "require-gpu", MODEL)
        assert f"allow  gpu-cc:{MODEL}" in out
        revoked = await verdicts.until(
            lambda k, v: k == p0.id and v is not None and v.status == "REVOKED", within=5
        )
        assert "requires a GPU in CC mode" in revoked.reason
        verify_verdict(revoked, pinned, time.time())
        await verdicts.until(lambda k, v: k == p0.id and v is None, within=5)
        assert time.monotonic() - started < 5
        # New evidence for MODEL without a GPU is refused (its verdict also orders it after the
        # revocation pass, which holds the same lock).
        p3 = Worker(sim)
        r = await judged(p3.evidence(p3.claims()))
        assert r.status == "REJECTED" and "requires a GPU" in r.reason, r.reason
        assert {p1.id, g1.id} <= set(svc.trusted)
        assert not [k for k, v in verdicts.seen if v is not None and v.status == "REVOKED"
                    and k != p0.id]  # fmt: skip

        # Lifting the requirement revokes nothing; MODEL without a GPU is trusted again.
        out = await asyncio.to_thread(cli, "no-require-gpu", MODEL)
        assert f"remove gpu-cc:{MODEL}" in out
        p4 = Worker(sim)
        assert (await judged(p4.evidence(p4.claims()))).status == "TRUSTED"
        # The service records a verdict as trusted once its send is acked: maybe just after
        # the test has read it.
        await _until(lambda: {p1.id, g1.id, p4.id} <= set(svc.trusted))
        assert [k for k, v in verdicts.seen if v is not None and v.status == "REVOKED"] == [p0.id]

    state = await read_registry(kafka_bootstrap, prefix=prefix)
    assert state.registry.gpu_cc_models == {GPU_MODEL}
    assert state.entries[f"gpu-cc:{MODEL}"].allowed is False

    # After a restart, g1's verdict (issued while GPU_MODEL required a GPU) is still trusted.
    restarted = AttestationService(conf)
    async with running(restarted):
        assert {p1.id, g1.id, p4.id} <= set(restarted.trusted)


async def _until(predicate: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
