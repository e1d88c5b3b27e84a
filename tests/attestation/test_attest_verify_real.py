"""Real Intel TDX quotes and collateral, with the upstream expected results at pinned times."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pcs_server import chain_header, pcs_server, signed_body

from cocoon.attestation.collateral import (
    BundleSource,
    Collateral,
    CollateralError,
    PcsSource,
    load_bundle,
    save_bundle,
    split_signed,
)
from cocoon.attestation.policy import Policy
from cocoon.attestation.quote import parse_quote
from cocoon.attestation.roots import INTEL_ROOT
from cocoon.attestation.verify import DcapError, Verifier, dcap_verify

GOTDX_TIME = int(datetime(2023, 7, 1, 1, 0, tzinfo=UTC).timestamp())  # go-tdx-guest currentTime
GOTDX_FUTURE = int(datetime(2053, 7, 1, 1, 0, tzinfo=UTC).timestamp())  # its futureTime


def _phala(data: Path, name: str = "phala_tdx_quote") -> tuple[bytes, Collateral]:
    col = load_bundle(data / f"{name}_collateral.json")[0]
    return (data / name).read_bytes(), col


def test_phala_v4_up_to_date_at_upstream_time(data: Path) -> None:
    raw, col = _phala(data)
    at = col.not_after - 1  # upstream: the end of the collateral window minus one second
    res = dcap_verify(parse_quote(raw), col, INTEL_ROOT, at)
    assert res.status == "UpToDate" and res.advisory_ids == ()
    # Through the whole pipeline with the image allowed: only the claims binding is missing.
    q = parse_quote(raw)
    pol = Policy.production(allowed_image_hashes=frozenset({q.image_hash().hex()}))
    verdict = Verifier(pol, BundleSource([col])).verify(raw, None, at)
    assert verdict.stage == "policy" and not verdict.accepted
    assert verdict.tcb_status == "UpToDate" and verdict.root == "intel-sgx-root-ca"
    assert verdict.reason.startswith("report_data: no claims")
    failing = [c.name for c in verdict.checks if not c.ok]
    assert failing == ["report_data"]


def test_phala_collateral_window(data: Path) -> None:
    _, col = _phala(data)
    assert datetime.fromtimestamp(col.not_before, UTC) == datetime(
        2025, 6, 19, 10, 32, 27, tzinfo=UTC
    )
    assert datetime.fromtimestamp(col.not_after, UTC) == datetime(
        2025, 7, 19, 10, 0, 35, tzinfo=UTC
    )


def test_expired_and_premature_collateral_rejected(data: Path) -> None:
    raw, col = _phala(data)
    verifier = Verifier(Policy.production(), BundleSource([col]))
    late = verifier.verify(raw, None, col.not_after + 1)
    assert late.stage == "collateral" and "not valid" in late.reason
    early = verifier.verify(raw, None, col.not_before - 1)
    assert early.stage == "collateral" and "not valid" in early.reason
    # dcap-qvl agrees on its own once the TCB info has expired.
    with pytest.raises(DcapError, match="expired"):
        dcap_verify(parse_quote(raw), col, INTEL_ROOT, col.not_after + 86400 * 60)


@pytest.mark.parametrize(
    ("field", "offset"), [("report_data", 48 + 584 - 1), ("mr_td", 48 + 136 + 5)]
)
def test_flipped_byte_breaks_signature(data: Path, field: str, offset: int) -> None:
    raw, col = _phala(data)
    bad = bytearray(raw)
    bad[offset] ^= 0x01
    q = parse_quote(bytes(bad))
    assert getattr(q.report, field) != getattr(parse_quote(raw).report, field)
    with pytest.raises(DcapError, match="ISV enclave report signature is invalid"):
        dcap_verify(q, col, INTEL_ROOT, col.not_after - 1)


def test_phala_v5_outdated_has_no_matching_tcb_level(data: Path) -> None:
    raw, col = _phala(data, "phala_tdx_quote_outdated")
    verdict = Verifier(Policy.production(), BundleSource([col])).verify(
        raw, None, col.not_after - 1
    )
    assert verdict.quote_version == 5 and verdict.td_report_version == "1.5"
    assert verdict.stage == "dcap" and "No matching TCB level found" in verdict.reason


def test_collateral_for_another_fmspc_is_not_used(data: Path) -> None:
    raw, _ = _phala(data)
    _, other = _phala(data, "phala_tdx_quote_outdated")
    verdict = Verifier(Policy.production(), BundleSource([other])).verify(
        raw, None, other.not_after
    )
    assert verdict.stage == "collateral" and "b0c06f000000" in verdict.reason


def test_real_quote_refused_when_policy_trusts_only_a_test_root(data: Path, sim) -> None:
    raw, col = _phala(data)
    pol = Policy(name="sim-only", trusted_roots=(sim.trust_anchor,))
    verdict = Verifier(pol, BundleSource([col])).verify(raw, None, col.not_after - 1)
    assert verdict.stage == "root" and "does not trust" in verdict.reason


def test_bundle_file_roundtrip(data: Path, tmp_path: Path) -> None:
    _, a = _phala(data)
    _, b = _phala(data, "phala_tdx_quote_outdated")
    save_bundle(tmp_path / "bundle.json", [a, b])
    loaded = load_bundle(tmp_path / "bundle.json")
    assert [c.fmspc for c in loaded] == ["b0c06f000000", "90c06f000000"]
    assert loaded[0].doc == a.doc
    with pytest.raises(CollateralError):
        load_bundle(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"tcb_info": 1}')
    with pytest.raises(CollateralError, match="lacks"):
        load_bundle(tmp_path / "bad.json")


def _gotdx_routes(data: Path, *, pccs_root_crl: bool) -> dict:
    tcb_chain = chain_header((data / "gotdx_tcb_signing_chain.pem").read_text())
    routes = {
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": (
            {
                "SGX-PCK-CRL-Issuer-Chain": chain_header(
                    (data / "gotdx_pck_crl_issuer_chain.pem").read_text()
                )
            },
            (data / "gotdx_pckcrl").read_bytes(),
        ),
        "/tdx/certification/v4/tcb?fmspc=50806f000000": (
            {"TCB-Info-Issuer-Chain": tcb_chain},
            (data / "gotdx_sample_tcbInfo_response").read_bytes(),
        ),
        "/tdx/certification/v4/qe/identity": (
            {"SGX-Enclave-Identity-Issuer-Chain": tcb_chain},
            (data / "gotdx_sample_qeIdentity_response").read_bytes(),
        ),
    }
    root_crl = (data / "gotdx_rootcrl.der").read_bytes()
    if pccs_root_crl:  # PCCS serves the root CA CRL hex-encoded
        routes["/sgx/certification/v4/rootcacrl"] = ({}, root_crl.hex().encode())
    else:
        routes["/IntelSGXRootCA.der"] = ({}, root_crl)
    return routes


@pytest.mark.parametrize("pccs_root_crl", [True, False])
def test_pcs_fetch_gotdx_collateral(data: Path, pccs_root_crl: bool) -> None:
    raw = (data / "gotdx_tdx_prod_quote_SPR_E4.dat").read_bytes()[:4935]
    q = parse_quote(raw)
    with pcs_server(_gotdx_routes(data, pccs_root_crl=pccs_root_crl)) as (base, log):
        src = PcsSource(
            base,
            clock=lambda: GOTDX_TIME,
            root_crl_url=None if pccs_root_crl else base + "/IntelSGXRootCA.der",
        )
        col = src.get(q, GOTDX_TIME)
        assert col.fmspc == "50806f000000" and col.covers(GOTDX_TIME)
        # The signed JSON must be carried verbatim: the TCB signing key's signature covers it.
        tcb_raw, sig = split_signed((data / "gotdx_sample_tcbInfo_response").read_text(), "tcbInfo")
        assert col.doc["tcb_info"] == tcb_raw and col.doc["tcb_info_signature"] == sig.hex()
        # Upstream: signatures, chains and collateral verify, but the sample TCB info yields a
        # TCB status failure for this quote's TEE_TCB_SVN (go-tdx-guest zeroes the SVNs).
        verdict = Verifier(Policy.production(), src).verify(raw, None, GOTDX_TIME)
        assert verdict.stage == "dcap" and "No matching TCB level found" in verdict.reason
        assert not parse_quote(raw).report.sept_ve_disable  # would also fail policy
        # go-tdx-guest's futureTime: collateral expired.
        assert (
            "not valid" in Verifier(Policy.production(), src).verify(raw, None, GOTDX_FUTURE).reason
        )
        assert src.fetches == 1  # served from cache until nextUpdate
    assert log.count("/tdx/certification/v4/qe/identity") == 1


def test_pcs_cache_expires_at_next_update(data: Path) -> None:
    raw = (data / "gotdx_tdx_prod_quote_SPR_E4.dat").read_bytes()[:4935]
    q = parse_quote(raw)
    clock = [GOTDX_TIME]
    with pcs_server(_gotdx_routes(data, pccs_root_crl=True)) as (base, _):
        src = PcsSource(base, clock=lambda: clock[0])
        first = src.get(q, GOTDX_TIME)
        src.get(q, GOTDX_TIME)
        assert src.fetches == 1
        clock[0] = first.not_after + 1
        src.get(q, GOTDX_TIME)
        assert src.fetches == 2


def test_pcs_errors_are_collateral_errors(data: Path) -> None:
    q = parse_quote((data / "phala_tdx_quote").read_bytes())
    with pcs_server({}) as (base, _), pytest.raises(CollateralError, match="HTTP 404"):
        PcsSource(base).get(q, 0)
    verdict = Verifier(Policy.production(), PcsSource("http://127.0.0.1:9", timeout=1)).verify(
        q.raw, None, 0
    )
    assert verdict.stage == "collateral" and "failed" in verdict.reason


def test_pcs_serves_simulated_collateral(sim, make_claims, now: int) -> None:
    """The same PCS path delivers simulated collateral; the development policy accepts."""
    col = sim.collateral(now)
    d = col.doc
    fmspc = col.fmspc
    routes = {
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": (
            {"SGX-PCK-CRL-Issuer-Chain": chain_header(d["pck_crl_issuer_chain"])},
            bytes.fromhex(d["pck_crl"]),
        ),
        f"/tdx/certification/v4/tcb?fmspc={fmspc}": (
            {"TCB-Info-Issuer-Chain": chain_header(d["tcb_info_issuer_chain"])},
            signed_body("tcbInfo", d["tcb_info"], d["tcb_info_signature"]),
        ),
        "/tdx/certification/v4/qe/identity": (
            {"SGX-Enclave-Identity-Issuer-Chain": chain_header(d["qe_identity_issuer_chain"])},
            signed_body("enclaveIdentity", d["qe_identity"], d["qe_identity_signature"]),
        ),
        "/sgx/certification/v4/rootcacrl": ({}, d["root_ca_crl"].encode()),
    }
    claims = make_claims()
    with pcs_server(routes) as (base, _):
        verdict = Verifier(sim.development_policy(), PcsSource(base)).verify(
            sim.quote(claims.report_data()), claims, now
        )
    assert verdict.accepted, verdict.reason
