"""GPU evidence from NVML, bound to the worker's claims, verified as the attestation service does.

The GPU is a fake NVML (support.fake_nvml) built on nvidia-ml-py's own structures and errors and
signing with a synthetic chain; the verifier is the service's (`evaluate_gpu`) with that chain's
root pinned, so a report that is not bound to these claims, or not signed, fails as it would.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.fake_nvml import FakeNvml
from support.gpu_synth import AT, World, make_world

from cocoon.attestation.gpu.verify import GpuEvidence, evaluate_gpu
from cocoon.core import tee
from cocoon.core.crypto import WorkerKeys
from cocoon.core.gpu_evidence import gpu_nonce
from cocoon.worker_proxy.gpu_nvml import GpuEvidenceUnavailable, collect_gpu_evidence
from cocoon.worker_proxy.identity import Identity


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(Path(tmp_path_factory.mktemp("rims")))


def claims() -> bytes:
    return tee.encode_claims(WorkerKeys.generate().public, "qwen", timestamp=int(AT.timestamp()))


def test_evidence_is_bound_to_the_claims_and_verifies(world: World) -> None:
    nvml = FakeNvml(world)
    mine = claims()
    evidence = collect_gpu_evidence(mine, nvml=nvml)

    verdict = evaluate_gpu(GpuEvidence.decode(evidence), gpu_nonce(mine), world.policy(), AT)
    assert verdict.accepted, (verdict.stage, verdict.reason)
    # The same report does not pass for anyone else's claims.
    other = evaluate_gpu(GpuEvidence.decode(evidence), gpu_nonce(claims()), world.policy(), AT)
    assert not other.accepted and other.stage == "nonce"
    assert nvml.reports_signed == 1 and nvml.initialised == 0, "NVML shut down after use"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"cc_mode": False}, "confidential computing is off"),
        ({"devtools": True}, "developer-tools mode"),
        ({"ready": False}, r"nvidia-smi conf-compute -srs 1"),
        ({"gpus": 0}, "Invalid Argument"),
    ],
)
def test_a_gpu_that_cannot_attest_says_why(world: World, setting: dict, message: str) -> None:
    nvml = FakeNvml(world, **setting)
    with pytest.raises(GpuEvidenceUnavailable, match=message):
        collect_gpu_evidence(claims(), nvml=nvml)
    assert nvml.reports_signed == 0 and nvml.initialised == 0


def test_without_an_nvidia_driver_the_real_bindings_say_so() -> None:
    # nvidia-ml-py itself, on this machine without libnvidia-ml: the error names NVML.
    with pytest.raises(GpuEvidenceUnavailable, match="NVIDIA driver not usable"):
        collect_gpu_evidence(os.urandom(64))


def test_the_worker_s_evidence_carries_the_gpu_report_over_its_own_claims(world: World) -> None:
    nvml = FakeNvml(world)
    identity = Identity.generate(
        "w-gpu", "qwen", gpu=lambda claims: collect_gpu_evidence(claims, nvml=nvml)
    )
    evidence = identity.evidence()
    assert evidence.gpu_evidence is not None and evidence.tdx_quote
    gpu = GpuEvidence.decode(evidence.gpu_evidence)
    verdict = evaluate_gpu(gpu, gpu_nonce(evidence.claims), world.policy(), AT)
    assert verdict.accepted, (verdict.stage, verdict.reason)
    assert Identity.generate("w-cpu", "qwen").evidence().gpu_evidence is None
