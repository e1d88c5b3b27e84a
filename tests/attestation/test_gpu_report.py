"""GPU report parsing on real H100 samples, and rejection of malformed input (bounded fuzz)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cocoon.attestation.gpu.certs import leaf_fwids, load_chain
from cocoon.attestation.gpu.report import (
    MAX_REPORT_BYTES,
    GpuEvidenceError,
    GpuReport,
    parse_report,
)
from cocoon.attestation.gpu.rim import driver_rim_id, vbios_rim_id

NVTRUST = Path(__file__).parent / "data" / "gpu" / "nvtrust"
HOPPER = bytes.fromhex((NVTRUST / "hopperAttestationReport.txt").read_text().strip())
OLDER = bytes.fromhex((NVTRUST / "attestationReport.txt").read_text().strip())


def test_hopper_sample_fields() -> None:
    r = parse_report(HOPPER)
    assert r.nonce.hex() == "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
    assert r.spdm_version == 0x11 and r.slot == 0
    assert len(r.blocks) == 64 and [b.index for b in r.blocks] == list(range(1, 65))
    assert all(len(b.value) == 48 for b in r.blocks)
    # index 3 (0-based) is the value NVIDIA's VBIOS RIM for 96.00.5E.00.01 also lists
    assert r.measurements()[3].hex().startswith("73bbf35822549e28")
    assert r.driver_version == "550.90.07"
    assert r.vbios_version == "96.00.9F.00.01"
    assert (r.text("project"), r.text("project_sku"), r.text("chip_sku")) == ("1010", "0200", "882")
    assert r.fwid is not None and len(r.fwid) == 48
    assert len(r.signature) == 96 and r.signed_bytes == HOPPER[:-96]
    assert driver_rim_id(r) == "NV_GPU_DRIVER_GH100_550.90.07"
    assert vbios_rim_id(r) == "NV_GPU_VBIOS_1010_0200_882_96009F0001"
    s = r.summary()
    assert s["opaque"]["driver_version"] == "550.90.07" and len(s["measurements"]) == 64


def test_older_sample_has_no_fwid() -> None:
    r = parse_report(OLDER)
    assert r.nonce.hex().startswith("4cff7f5380ead8fa")
    assert (r.driver_version, r.vbios_version, r.fwid) == ("545.00", "96.00.5E.00.01", None)


def test_leaf_certificate_carries_the_reported_fwid() -> None:
    chain = load_chain((NVTRUST / "hopperCertChain.txt").read_bytes())
    assert parse_report(HOPPER).fwid in leaf_fwids(chain[0])
    assert leaf_fwids(chain[1]) == []  # only the attestation-key certificate has one


def test_chain_loads_as_pem_or_concatenated_der() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = load_chain((NVTRUST / "hopperCertChain.txt").read_bytes())
    der = load_chain(b"".join(c.public_bytes(Encoding.DER) for c in pem))
    assert der == pem and len(pem) == 5


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "truncated"),
        (HOPPER[:36], "truncated"),
        (HOPPER[:-1], "truncated"),
        (HOPPER + b"\x00", "stray bytes"),
        (b"\x12" + HOPPER[1:], "SPDM version"),
        (HOPPER[:1] + b"\xe1" + HOPPER[2:], "GET_MEASUREMENTS"),
        (HOPPER[:2] + b"\x00" + HOPPER[3:], "signature"),
        (HOPPER[:3] + b"\x01" + HOPPER[4:], "not all"),
        (HOPPER[:38] + b"\x61" + HOPPER[39:], "MEASUREMENTS"),
        (HOPPER[:41] + b"\x3f" + HOPPER[42:], "blocks"),
        (HOPPER[:46] + b"\x02" + HOPPER[47:], "DMTF"),
        (b"\x00" * (MAX_REPORT_BYTES + 1), "cap"),
    ],
)
def test_malformed_reports_are_rejected_with_a_reason(blob: bytes, message: str) -> None:
    with pytest.raises(GpuEvidenceError, match=message):
        parse_report(blob)


def _parse_or_reject(blob: bytes) -> None:
    try:
        r = parse_report(blob)
    except GpuEvidenceError as exc:
        assert str(exc)
        return
    assert isinstance(r, GpuReport)
    r.summary()  # every accessor must work on whatever parsed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=5000))
def test_fuzz_random_bytes(blob: bytes) -> None:
    _parse_or_reject(blob)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([HOPPER, OLDER]),
    st.lists(st.tuples(st.integers(0, 4200), st.integers(0, 255)), max_size=6),
    st.integers(0, 4200),
)
def test_fuzz_mutated_real_reports(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    blob = bytearray(seed)
    for pos, val in flips:
        if pos < len(blob):
            blob[pos] = val
    _parse_or_reject(bytes(blob[: max(cut, len(blob) - 200)]))
    _parse_or_reject(bytes(blob))
