"""Simulated TDX through the real dcap-qvl path, and every policy decision on top of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocoon.attestation.collateral import BundleSource, load_bundle
from cocoon.attestation.freshness import NonceBook
from cocoon.attestation.policy import MeasurementSet, Policy, PolicyInput, evaluate
from cocoon.attestation.quote import parse_quote
from cocoon.attestation.roots import INTEL_ROOT
from cocoon.attestation.simtdx import (
    DEFAULT_MEASUREMENTS,
    OUT_OF_DATE_TEE_TCB_SVN,
    SIM_ADVISORY,
    SimMeasurements,
    SimTdx,
)
from cocoon.attestation.verify import DcapError, Verifier, dcap_verify


@pytest.fixture
def verify(sim: SimTdx, now: int):
    def run(
        quote: bytes, claims, *, policy: Policy | None = None, collateral=None, nonces=None, at=None
    ):
        col = collateral or sim.collateral(now)
        pol = policy or sim.development_policy()
        return Verifier(pol, BundleSource([col]), nonces).verify(
            quote, claims, now if at is None else at
        )

    return run


@pytest.mark.parametrize("version", [4, 5])
def test_accepted_under_development_policy(sim, make_claims, verify, version: int) -> None:
    claims = make_claims()
    quote = sim.quote(claims.report_data(), version=version)
    verdict = verify(quote, claims)
    assert verdict.accepted, verdict.reason
    assert verdict.tcb_status == "UpToDate" and verdict.root == "simtdx-test-root"
    assert verdict.image_hash == DEFAULT_MEASUREMENTS.image_hash().hex()
    assert verdict.quote_version == version
    assert all(c.ok for c in verdict.checks)
    d = verdict.to_dict()
    assert d["schema"] == "cocoon.attestation.verdict/1" and d["accepted"] is True
    json.dumps(d)


def test_quote_is_real_format(sim, make_claims) -> None:
    claims = make_claims()
    q = parse_quote(sim.quote(claims.report_data()))
    assert q.report.report_data == claims.report_data()
    assert q.pck.fmspc.hex() == "cc00cc00cc00" and q.pck.ca == "platform"
    assert len(q.pck_chain) == 3 and q.qe_report.report_data[32:] == bytes(32)
    assert q.report.sept_ve_disable and not q.report.debug


def test_production_policy_rejects_simulated_quote(sim, make_claims, verify, data: Path) -> None:
    claims = make_claims()
    quote = sim.quote(claims.report_data())
    verdict = verify(
        quote,
        claims,
        policy=Policy.production(
            allowed_image_hashes=frozenset({DEFAULT_MEASUREMENTS.image_hash().hex()})
        ),
    )
    assert not verdict.accepted and verdict.stage == "root"
    # And dcap-qvl itself refuses the chain when asked to verify against the Intel root,
    # both with the simulated collateral and with genuine Intel collateral.
    q = parse_quote(quote)
    with pytest.raises(DcapError):
        dcap_verify(q, sim.collateral(), INTEL_ROOT, verdict.verified_at)
    real = load_bundle(data / "phala_tdx_quote_collateral.json")[0]
    with pytest.raises(DcapError):
        dcap_verify(q, real, INTEL_ROOT, real.not_after - 1)


def test_other_test_root_is_not_trusted(sim, make_claims, verify, tmp_path: Path) -> None:
    other = SimTdx.create()
    claims = make_claims()
    verdict = verify(other.quote(claims.report_data()), claims, collateral=other.collateral())
    assert verdict.stage == "root"


def test_debug_td_refused(sim, make_claims, verify, now: int) -> None:
    claims = make_claims()
    quote = sim.quote(claims.report_data(), debug=True)
    verdict = verify(quote, claims)
    assert not verdict.accepted and "Debug" in verdict.reason
    # Our own policy refuses it too, independently of the library.
    checks = evaluate(
        sim.development_policy(), PolicyInput(parse_quote(quote), "UpToDate", (), claims, now)
    )
    assert [c.name for c in checks if not c.ok] == ["debug"]


def test_sept_ve_disable_required(sim, make_claims, verify, now: int) -> None:
    claims = make_claims()
    quote = sim.quote(claims.report_data(), sept_ve_disable=False)
    assert not verify(quote, claims).accepted
    checks = evaluate(
        sim.development_policy(), PolicyInput(parse_quote(quote), "UpToDate", (), claims, now)
    )
    assert [c.name for c in checks if not c.ok] == ["sept_ve_disable"]


def test_nonzero_mr_service_td(sim, make_claims, verify, now: int) -> None:
    claims = make_claims()
    quote = sim.quote(claims.report_data(), version=5, mr_service_td=b"\x01" * 48)
    verdict = verify(quote, claims)
    assert not verdict.accepted and "service TD" in verdict.reason
    checks = evaluate(
        sim.development_policy(), PolicyInput(parse_quote(quote), "UpToDate", (), claims, now)
    )
    assert [c.name for c in checks if not c.ok] == ["mr_service_td"]


def test_out_of_date_needs_opt_in_and_advisory_allow_list(sim, make_claims, verify) -> None:
    claims = make_claims()
    quote = sim.quote(claims.report_data(), tee_tcb_svn=OUT_OF_DATE_TEE_TCB_SVN)
    default = verify(quote, claims)
    assert not default.accepted and default.tcb_status == "OutOfDate"
    assert default.advisory_ids == (SIM_ADVISORY,) and default.reason.startswith("tcb_status")
    opted = sim.development_policy(accepted_tcb_statuses=frozenset({"UpToDate", "OutOfDate"}))
    partly = verify(quote, claims, policy=opted)
    assert not partly.accepted and partly.reason.startswith("advisories")
    full = sim.development_policy(
        accepted_tcb_statuses=frozenset({"UpToDate", "OutOfDate"}),
        allowed_advisories=frozenset({SIM_ADVISORY}),
    )
    assert verify(quote, claims, policy=full).accepted


def test_tcb_below_every_level(sim, make_claims, verify) -> None:
    claims = make_claims()
    verdict = verify(sim.quote(claims.report_data(), tee_tcb_svn=bytes(16)), claims)
    assert verdict.stage == "dcap" and "No matching TCB level" in verdict.reason


def test_revoked_pck_certificate(sim, make_claims, verify, now: int) -> None:
    claims = make_claims()
    verdict = verify(
        sim.quote(claims.report_data()), claims, collateral=sim.collateral(now, revoke_pck=True)
    )
    assert verdict.stage == "dcap" and "CertRevoked" in verdict.reason


def test_expired_simulated_collateral(sim, make_claims, verify, now: int) -> None:
    claims = make_claims(timestamp=now + 40 * 86400)
    verdict = verify(sim.quote(claims.report_data()), claims, at=now + 40 * 86400)
    assert verdict.stage == "collateral" and "not valid" in verdict.reason


def test_flipped_report_data_byte(sim, make_claims, verify) -> None:
    claims = make_claims()
    quote = bytearray(sim.quote(claims.report_data()))
    quote[48 + 584 - 1] ^= 0x80
    verdict = verify(bytes(quote), claims)
    assert verdict.stage == "dcap" and "signature is invalid" in verdict.reason


def test_claims_bound_to_report_data(sim, make_claims, verify) -> None:
    claims = make_claims()
    quote = sim.quote(claims.report_data())
    moved = make_claims()  # same quote presented with another worker's keys
    verdict = verify(quote, moved)
    assert not verdict.accepted and verdict.reason.startswith("report_data")
    assert not verify(quote, None).accepted


def test_nonce_freshness_single_use(sim, make_claims, verify, now: int) -> None:
    book = NonceBook(ttl_seconds=300)
    nonce = book.issue(now)
    claims = make_claims(nonce=nonce)
    quote = sim.quote(claims.report_data())
    assert verify(quote, claims, nonces=book).accepted
    replay = verify(quote, claims, nonces=book)
    assert not replay.accepted and replay.reason.startswith("freshness")
    unknown = make_claims(nonce=b"\x07" * 32)
    assert "not issued" in verify(sim.quote(unknown.report_data()), unknown, nonces=book).reason
    late_nonce = book.issue(now)
    late = make_claims(nonce=late_nonce)
    verdict = verify(sim.quote(late.report_data()), late, nonces=book, at=now + 301)
    assert verdict.reason == "freshness: nonce expired"
    no_book = make_claims(nonce=book.issue(now))
    assert "no nonce book" in verify(sim.quote(no_book.report_data()), no_book).reason


def test_timestamp_freshness_bounds(sim, make_claims, verify, now: int) -> None:
    for ts, ok in (
        (now, True),
        (now - 600, True),
        (now - 601, False),
        (now + 60, True),
        (now + 61, False),
    ):
        claims = make_claims(timestamp=ts)
        verdict = verify(sim.quote(claims.report_data()), claims)
        assert verdict.accepted is ok, (ts - now, verdict.reason)


def test_image_allow_list_or_measurement_set(sim, make_claims, verify) -> None:
    other = SimMeasurements(rtmr3=b"\x33" * 48)
    claims = make_claims()
    quote = sim.quote(claims.report_data(), measurements=other)
    refused = verify(quote, claims)
    assert refused.reason.startswith("measurements") and other.image_hash().hex() in refused.reason
    by_hash = sim.development_policy(allowed_image_hashes=frozenset({other.image_hash().hex()}))
    assert verify(quote, claims, policy=by_hash).accepted
    mset = MeasurementSet(other.mr_td, (other.rtmr0, other.rtmr1, other.rtmr2, other.rtmr3))
    by_set = sim.development_policy(allowed_image_hashes=frozenset(), allowed_measurements=(mset,))
    assert verify(quote, claims, policy=by_set).accepted
    # MRCONFIGID is in the image hash but not in the measurement set.
    cfg = SimMeasurements(rtmr3=b"\x33" * 48, mr_config_id=b"\x01" * 48)
    claims2 = make_claims()
    assert verify(
        sim.quote(claims2.report_data(), measurements=cfg), claims2, policy=by_set
    ).accepted
    assert not verify(
        sim.quote(claims2.report_data(), measurements=cfg), claims2, policy=by_hash
    ).accepted


def test_model_allow_list(sim, make_claims, verify) -> None:
    claims = make_claims(model="llama")
    pol = sim.development_policy(allowed_models=frozenset({"qwen3-0.6b"}))
    verdict = verify(sim.quote(claims.report_data()), claims, policy=pol)
    assert verdict.reason.startswith("model")


def test_ca_is_persisted_and_shared(tmp_path: Path) -> None:
    a = SimTdx.load_or_create(tmp_path)
    b = SimTdx.load_or_create(tmp_path)
    assert a.trust_anchor == b.trust_anchor and a.ppid == b.ppid
    assert (tmp_path / "simtdx.json").stat().st_mode & 0o077 == 0
    # A quote from one instance verifies with collateral from the other.
    rd = bytes(64)
    assert (
        dcap_verify(
            parse_quote(a.quote(rd)), b.collateral(), b.trust_anchor, b.collateral().not_after - 10
        ).status
        == "UpToDate"
    )


def test_cache_dir_default(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COCOON_CACHE_DIR", str(tmp_path))
    assert SimTdx.default_dir() == tmp_path / "attestation" / "simtdx"
