"""GPU evidence on the wire and in the registry: the `cocoon/gpu-evidence/v1` container, the
worker's nonce, `gpu-cc:` registry entries, and the verifier handing a GPU verdict to the policy.
The Kafka service path is in test_service_gpu."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from support.gpu_synth import AT, World, make_world

from cocoon.attestation.claims import Claims
from cocoon.attestation.collateral import BundleSource
from cocoon.attestation.freshness import NonceBook
from cocoon.attestation.gpu.report import GpuEvidenceError
from cocoon.attestation.gpu.verify import GpuEvidence, evaluate_gpu, gpu_nonce
from cocoon.attestation.policy import Policy
from cocoon.attestation.registry import Registry, RegistryError
from cocoon.attestation.registry_topic import RegistryState, diff
from cocoon.attestation.simtdx import DEFAULT_MEASUREMENTS, SimTdx
from cocoon.attestation.verify import Verifier
from cocoon.core import gpu_evidence as wire
from cocoon.core.codec import models
from cocoon.core.crypto.keys import WorkerPublicKeys
from cocoon.core.tee import encode_claims

GPU = Path(__file__).parent / "data" / "gpu" / "nvtrust"
HOPPER = bytes.fromhex((GPU / "hopperAttestationReport.txt").read_text().strip())
HOPPER_CHAIN = (GPU / "hopperCertChain.txt").read_bytes()


# ---- the container ---------------------------------------------------------------------------


def test_container_round_trips_the_real_h100_sample_and_pins_its_layout() -> None:
    blob = GpuEvidence(HOPPER, HOPPER_CHAIN).encode()
    assert blob == (
        b"cocoon/gpu-evidence/v1\n"
        + struct.pack(">BI", 1, len(HOPPER))
        + HOPPER
        + struct.pack(">BI", 2, len(HOPPER_CHAIN))
        + HOPPER_CHAIN
    )
    assert GpuEvidence.decode(blob) == GpuEvidence(HOPPER, HOPPER_CHAIN)
    assert wire.decode_gpu_evidence(blob) == (HOPPER, HOPPER_CHAIN)


def _field(tag: int, value: bytes) -> bytes:
    return struct.pack(">BI", tag, len(value)) + value


MAGIC = wire.GPU_EVIDENCE_MAGIC


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"", "bad magic"),
        (b"cocoon/gpu-evidence/v2\n" + _field(1, b"r") + _field(2, b"c"), "bad magic"),
        (MAGIC, "truncated before field 1"),
        (MAGIC + _field(2, b"c") + _field(1, b"r"), "expected field 1"),
        (MAGIC + _field(1, b"r"), "truncated before field 2"),
        (MAGIC + _field(1, b"") + _field(2, b"c"), "report must be 1.."),
        (MAGIC + _field(1, b"r") + struct.pack(">BI", 2, 10) + b"short", "cert_chain is truncated"),
        (MAGIC + _field(1, b"r") + _field(2, b"c") + b"\x00", "1 stray bytes"),
        (MAGIC + _field(1, b"r" * (16 * 1024 + 1)) + _field(2, b"c"), "report must be 1.."),
        (MAGIC + b"\x00" * (wire.MAX_GPU_EVIDENCE_BYTES + 1), "over"),
    ],
)
def test_container_refuses_any_deviation(blob: bytes, reason: str) -> None:
    with pytest.raises(wire.GpuEvidenceFormatError, match=reason):
        wire.decode_gpu_evidence(blob)
    with pytest.raises(GpuEvidenceError, match="malformed GPU evidence container"):
        GpuEvidence.decode(blob)


def test_encoder_refuses_empty_and_oversized_parts() -> None:
    with pytest.raises(wire.GpuEvidenceFormatError, match="report"):
        wire.encode_gpu_evidence(b"", HOPPER_CHAIN)
    with pytest.raises(wire.GpuEvidenceFormatError, match="cert_chain"):
        wire.encode_gpu_evidence(HOPPER, b"x" * (wire.MAX_CHAIN_BYTES + 1))


def test_worker_side_nonce_equals_the_services(make_claims: Callable[..., Claims]) -> None:
    for claims in (make_claims(), make_claims(nonce=os.urandom(32), model="llama-70b-cc")):
        assert wire.gpu_nonce(claims.encode()) == gpu_nonce(claims)
    # and from the worker's own claims encoder (cocoon.core.tee), without cocoon.attestation
    c = make_claims(timestamp=1_700_000_000)
    keys = WorkerPublicKeys(c.signing_key, c.hpke_x25519, c.hpke_mlkem768_x25519)
    worker_bytes = encode_claims(keys, c.model, timestamp=1_700_000_000)
    assert worker_bytes == c.encode() and wire.gpu_nonce(worker_bytes) == gpu_nonce(c)


# ---- registry entries ------------------------------------------------------------------------


def _fold(entries: list, state: RegistryState | None = None) -> RegistryState:
    state = state or RegistryState()
    for n, e in enumerate(entries, start=state.version + 1):
        record = models.RegistryEntry(
            entry_id=e.entry_id,
            kind=e.kind,
            subject=e.subject,
            allowed=e.allowed,
            attributes=e.attributes,
            version=n,
            updated_by="test",
            updated_at=0,
        )
        state.update(e.entry_id, record)
    return state


def test_gpu_requirement_is_a_policy_entry_folded_into_the_policy() -> None:
    reg = Registry()
    reg.add_model("llama-70b-cc", "aa" * 32)
    reg.require_gpu("llama-70b-cc")
    entries = diff(Registry(), reg)
    gpu = next(e for e in entries if e.entry_id == "gpu-cc:llama-70b-cc")
    assert (gpu.kind, gpu.subject, gpu.allowed) == ("POLICY", "llama-70b-cc", True)
    assert gpu.attributes == {"setting": "require_gpu_cc"}
    state = _fold(entries)
    assert state.registry.gpu_cc_models == {"llama-70b-cc"}
    assert state.gpu_required_since("llama-70b-cc") == state.versions["gpu-cc:llama-70b-cc"]
    assert state.gpu_required_since("other") is None
    # the registry adds to what the base policy already requires
    base = Policy(require_gpu_cc_models=frozenset({"base-model"}))
    applied = state.registry.apply(base)
    assert applied.require_gpu_cc_models == {"base-model", "llama-70b-cc"}

    lifted = Registry.from_dict(reg.to_dict())
    assert lifted.no_require_gpu("llama-70b-cc") and not lifted.no_require_gpu("llama-70b-cc")
    removal = diff(reg, lifted)
    assert [(e.entry_id, e.allowed) for e in removal] == [("gpu-cc:llama-70b-cc", False)]
    state = _fold(removal, state)
    assert state.registry.gpu_cc_models == set()
    assert state.gpu_required_since("llama-70b-cc") is None
    assert state.registry.models == {"llama-70b-cc": "aa" * 32}  # the model itself stays


def test_registry_file_form_keeps_gpu_requirements_and_reads_older_files() -> None:
    reg = Registry()
    reg.require_gpu("m")
    doc = reg.to_dict()
    assert doc["gpu_cc_models"] == ["m"]
    assert Registry.from_dict(doc).gpu_cc_models == {"m"}
    del doc["gpu_cc_models"]  # written before the field existed
    assert Registry.from_dict(doc).gpu_cc_models == set()
    with pytest.raises(RegistryError, match="empty"):
        reg.require_gpu("")


def test_an_unknown_policy_setting_changes_nothing() -> None:
    state = RegistryState()
    bad = models.RegistryEntry(
        entry_id="gpu-cc:m",
        kind="POLICY",
        subject="m",
        allowed=True,
        attributes={"setting": "something-else"},
        version=1,
        updated_by="x",
        updated_at=0,
    )
    with pytest.raises(RegistryError, match="unknown policy setting"):
        state.update("gpu-cc:m", bad)
    assert state.registry.gpu_cc_models == set() and state.version == 0


# ---- the verifier passes the GPU verdict to the policy -----------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("gpu-rims"))


def test_verifier_hands_the_gpu_verdict_to_the_policy(
    world: World, sim: SimTdx, make_claims: Callable[..., Claims], now: int
) -> None:
    policy = sim.development_policy(
        allowed_image_hashes=frozenset({DEFAULT_MEASUREMENTS.image_hash().hex()}),
        require_gpu_cc_models=frozenset({"llama-70b-cc"}),
    )
    verifier = Verifier(policy, BundleSource([sim.collateral()]), NonceBook())
    gpu_policy = world.policy()

    def verify(claims: Claims, evidence_nonce: bytes | None) -> tuple[bool, str, list[str]]:
        gpu = None
        if evidence_nonce is not None:
            ev = world.evidence(evidence_nonce)
            gpu = evaluate_gpu(ev, gpu_nonce(claims), gpu_policy, AT)
        v = verifier.verify(sim.quote(claims.report_data()), claims, now, {"gpu": gpu})
        return v.accepted, v.reason, [c.name for c in v.checks]

    required = make_claims(model="llama-70b-cc")
    ok, reason, checks = verify(required, gpu_nonce(required))
    assert ok and "gpu_cc" in checks, reason
    ok, reason, _ = verify(make_claims(model="llama-70b-cc"), None)
    assert not ok and reason.startswith("gpu_cc:") and "no GPU evidence" in reason
    stale = make_claims(model="llama-70b-cc")
    ok, reason, _ = verify(stale, os.urandom(32))
    assert not ok and "rejected at nonce" in reason

    optional = make_claims()  # a model that does not require a GPU
    ok, reason, checks = verify(optional, None)
    assert ok and "gpu_cc" not in checks, reason
    optional = make_claims()
    assert verify(optional, gpu_nonce(optional))[0]
    ok, reason, _ = verify(make_claims(), os.urandom(32))  # presented, but it does not verify
    assert not ok and reason.startswith("gpu_cc: GPU evidence rejected at nonce"), reason
