"""End-to-end GPU verification on real H100 evidence, offline reference data, and negatives."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cocoon.attestation.gpu.certs import NVIDIA_DEVICE_ROOT, ChainError, load_chain, verify_chain
from cocoon.attestation.gpu.ocsp import OcspResponses
from cocoon.attestation.gpu.report import parse_report
from cocoon.attestation.gpu.rim import RimError, RimFiles, golden_for, mismatches, parse_rim
from cocoon.attestation.gpu.verify import GpuEvidence, GpuPolicy, evaluate_gpu

GPU = Path(__file__).parent / "data" / "gpu"
NVTRUST = GPU / "nvtrust"
GOOGLE = GPU / "go-nvattest-tools"
HOPPER = bytes.fromhex((NVTRUST / "hopperAttestationReport.txt").read_text().strip())
HOPPER_CHAIN = (NVTRUST / "hopperCertChain.txt").read_bytes()
HOPPER_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
OLDER = bytes.fromhex((NVTRUST / "attestationReport.txt").read_text().strip())
OLDER_CHAIN = (NVTRUST / "gpuAkCertChain.txt").read_bytes()
AT = datetime(2025, 8, 21, 12, 0, tzinfo=UTC)  # inside the real OCSP responses' window


def offline_policy() -> GpuPolicy:
    ocsp = OcspResponses.from_files(sorted((GOOGLE / "ocsp").iterdir()))
    return GpuPolicy.offline(RimFiles.from_dir(GOOGLE / "rim"), ocsp)


def pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def test_real_hopper_evidence_verifies_offline() -> None:
    v = evaluate_gpu(GpuEvidence(HOPPER, HOPPER_CHAIN), HOPPER_NONCE, offline_policy(), AT)
    assert v.accepted, v.reason
    assert v.stage == "accepted" and v.root == NVIDIA_DEVICE_ROOT.name
    assert [c.name for c in v.checks] == [
        "format", "nonce", "root", "chain", "signature", "fwid", "ocsp", "measurements"
    ]  # fmt: skip
    assert (v.driver_version, v.vbios_version) == ("550.90.07", "96.00.9F.00.01")
    assert v.to_dict()["schema"] == "cocoon.attestation.gpu-verdict/1"


def test_pinned_root_is_nvidias_published_one() -> None:
    published = x509.load_pem_x509_certificate((NVTRUST / "verifier_device_root.pem").read_bytes())
    assert published.public_bytes(Encoding.DER) == NVIDIA_DEVICE_ROOT.der


@pytest.mark.parametrize("pos", [5, 40, 1000, 3600, len(HOPPER) - 97, len(HOPPER) - 1])
def test_flipped_byte_fails(pos: int) -> None:
    bad = bytearray(HOPPER)
    bad[pos] ^= 0x01
    nonce = bytes(bad[4:36])  # keep the nonce check out of the way where the flip hits it
    v = evaluate_gpu(GpuEvidence(bytes(bad), HOPPER_CHAIN), nonce, offline_policy(), AT)
    assert not v.accepted
    assert v.stage in ("format", "signature"), v.reason


def test_flipped_measurement_fails_the_signature() -> None:
    bad = bytearray(HOPPER)
    bad[37 + 8 + 55 * 3 + 10] ^= 0x80  # inside measurement block 4's value
    v = evaluate_gpu(GpuEvidence(bytes(bad), HOPPER_CHAIN), HOPPER_NONCE, offline_policy(), AT)
    assert (v.accepted, v.stage) == (False, "signature")
    assert "does not verify" in v.reason


def test_wrong_nonce_fails() -> None:
    v = evaluate_gpu(GpuEvidence(HOPPER, HOPPER_CHAIN), b"\x01" * 32, offline_policy(), AT)
    assert (v.accepted, v.stage) == (False, "nonce")
    v = evaluate_gpu(GpuEvidence(HOPPER, HOPPER_CHAIN), HOPPER_NONCE[:16], offline_policy(), AT)
    assert (v.accepted, v.stage) == (False, "nonce")


def test_report_with_another_gpus_chain_fails_the_signature() -> None:
    v = evaluate_gpu(GpuEvidence(HOPPER, OLDER_CHAIN), HOPPER_NONCE, offline_policy(), AT)
    assert (v.accepted, v.stage) == (False, "signature")


def test_broken_chain_fails() -> None:
    certs = load_chain(HOPPER_CHAIN)
    missing_link = pem([certs[0], *certs[2:]])  # device certificate removed
    v = evaluate_gpu(GpuEvidence(HOPPER, missing_link), HOPPER_NONCE, offline_policy(), AT)
    assert (v.accepted, v.stage) == (False, "chain")
    # another GPU's device certificate: names match, signature does not
    other = load_chain(OLDER_CHAIN)
    spliced = pem([certs[0], other[1], *certs[2:]])
    v = evaluate_gpu(GpuEvidence(HOPPER, spliced), HOPPER_NONCE, offline_policy(), AT)
    assert (v.accepted, v.stage) == (False, "chain")


def test_chain_without_pinned_root_fails() -> None:
    certs = load_chain(HOPPER_CHAIN)
    v = evaluate_gpu(GpuEvidence(HOPPER, pem(certs[:-1])), HOPPER_NONCE, offline_policy(), AT)
    assert (v.accepted, v.stage) == (False, "root")


def test_chain_outside_validity_fails() -> None:
    with pytest.raises(ChainError, match="not valid"):
        verify_chain(load_chain(HOPPER_CHAIN), datetime(2019, 1, 1, tzinfo=UTC))


def test_ocsp_responses_outside_their_window_fail() -> None:
    late = datetime(2025, 8, 23, tzinfo=UTC)
    v = evaluate_gpu(GpuEvidence(HOPPER, HOPPER_CHAIN), HOPPER_NONCE, offline_policy(), late)
    assert (v.accepted, v.stage) == (False, "ocsp")
    assert "not current" in v.reason


def test_missing_ocsp_response_fails() -> None:
    only_two = sorted((GOOGLE / "ocsp").iterdir())[:2]
    policy = GpuPolicy.offline(
        RimFiles.from_dir(GOOGLE / "rim"), OcspResponses.from_files(only_two)
    )
    v = evaluate_gpu(GpuEvidence(HOPPER, HOPPER_CHAIN), HOPPER_NONCE, policy, AT)
    assert (v.accepted, v.stage) == (False, "ocsp")


def test_missing_rim_fails() -> None:
    policy = GpuPolicy.offline(RimFiles({}), offline_policy().ocsp)  # type: ignore[arg-type]
    v = evaluate_gpu(GpuEvidence(HOPPER, HOPPER_CHAIN), HOPPER_NONCE, policy, AT)
    assert (v.accepted, v.stage) == (False, "measurements")
    assert "no RIM file" in v.reason


def test_older_sample_matches_its_reference_rims() -> None:
    r = parse_report(OLDER)
    rims = RimFiles(
        {
            "NV_GPU_DRIVER_GH100_545.00": NVTRUST / "Driver_RIM_test_no_gpu.swidtag",
            "NV_GPU_VBIOS_1010_0200_882_96005E0001": NVTRUST
            / "1010_0200_882_96005E0001_test_no_gpu.swidtag",
        }
    )
    golden = golden_for(r, rims)
    assert len(golden) == 33 and mismatches(r, golden) == []


def test_production_vbios_rim_reports_mismatching_indices() -> None:
    r = parse_report(OLDER)
    rims = RimFiles(
        {
            "NV_GPU_DRIVER_GH100_545.00": NVTRUST / "Driver_RIM_test_no_gpu.swidtag",
            "NV_GPU_VBIOS_1010_0200_882_96005E0001": NVTRUST
            / "1010_0200_882_96005E0001_PROD.swidtag",
        }
    )
    assert mismatches(r, golden_for(r, rims)) == [1, 2, 3, 9]


def test_rim_for_another_version_is_refused() -> None:
    r = parse_report(HOPPER)
    rims = RimFiles(
        {
            "NV_GPU_DRIVER_GH100_550.90.07": NVTRUST / "Driver_RIM_test_no_gpu.swidtag",
            "NV_GPU_VBIOS_1010_0200_882_96009F0001": GOOGLE
            / "rim"
            / "NV_GPU_VBIOS_1010_0200_882_96009F0001.xml",
        }
    )
    with pytest.raises(RimError, match=r"driver RIM is for 545\.00"):
        golden_for(r, rims)


def test_hopper_measurement_mismatch_reports_indices(tmp_path: Path) -> None:
    # NVIDIA's RIMs for this report, with golden index 7 replaced: the verdict names index 7.
    rim_dir = GOOGLE / "rim"
    driver = (rim_dir / "NV_GPU_DRIVER_GH100_550.90.07.xml").read_bytes()
    want = parse_report(HOPPER).measurements()[7].hex().encode()
    assert driver.count(want) == 1
    (tmp_path / "NV_GPU_DRIVER_GH100_550.90.07.xml").write_bytes(driver.replace(want, b"00" * 48))
    vbios = "NV_GPU_VBIOS_1010_0200_882_96009F0001.xml"
    (tmp_path / vbios).write_bytes((rim_dir / vbios).read_bytes())
    policy = GpuPolicy.offline(RimFiles.from_dir(tmp_path), offline_policy().ocsp)  # type: ignore[arg-type]
    v = evaluate_gpu(GpuEvidence(HOPPER, HOPPER_CHAIN), HOPPER_NONCE, policy, AT)
    assert (v.accepted, v.stage, v.mismatched_indices) == (False, "measurements", [7])


@pytest.mark.parametrize(
    "xml",
    [
        b"<not-xml",
        b'<!DOCTYPE x [<!ENTITY a "b">]><x/>',
        b"<SoftwareIdentity/>",
        b'<S><Meta colloquialVersion="1"/><Resource active="True" index="0" size="48"'
        b' alternatives="1"/></S>',
    ],
)
def test_malformed_rims_are_rejected(xml: bytes) -> None:
    with pytest.raises(RimError):
        parse_rim("bad", xml)


def test_garbage_evidence_gives_a_format_verdict() -> None:
    for ev in (None, GpuEvidence(b"\x11\xe0", HOPPER_CHAIN), GpuEvidence(HOPPER, b"garbage")):
        v = evaluate_gpu(ev, HOPPER_NONCE, offline_policy(), AT)
        assert (v.accepted, v.stage) == (False, "format") and v.reason


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(HOPPER) - 1), st.integers(1, 255)), min_size=1))
def test_fuzz_mutated_evidence_is_never_accepted(flips: list[tuple[int, int]]) -> None:
    bad = bytearray(HOPPER)
    for pos, mask in flips:
        bad[pos] ^= mask
    v = evaluate_gpu(GpuEvidence(bytes(bad), HOPPER_CHAIN), bytes(bad[4:36]), offline_policy(), AT)
    assert v.accepted == (bytes(bad) == HOPPER)


CHAIN_DER = b"".join(c.public_bytes(Encoding.DER) for c in load_chain(HOPPER_CHAIN))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(CHAIN_DER) - 1), st.integers(1, 255)), min_size=1))
def test_fuzz_mutated_chain_is_never_accepted(flips: list[tuple[int, int]]) -> None:
    bad = bytearray(CHAIN_DER)
    for pos, mask in flips:
        bad[pos] ^= mask
    v = evaluate_gpu(GpuEvidence(HOPPER, bytes(bad)), HOPPER_NONCE, offline_policy(), AT)
    assert v.reason
    assert v.accepted == (bytes(bad) == CHAIN_DER)
