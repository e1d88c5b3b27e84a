"""The client verifies a worker itself, and refuses with a reason before any prompt is sealed."""

from __future__ import annotations

import time
from typing import Any

import dcap_qvl
import pytest
from client_support import (
    IMAGE,
    MODEL,
    SimWorker,
    allow_all,
    dev_config,
    registry_entry,
    sgx_quote,
)

from cocoon.attestation.simtdx import SimTdx
from cocoon.attestation.verdicts import ServiceKey
from cocoon.client.registry import RegistryView
from cocoon.client.verify import Evidence, WorkerVerifier


@pytest.fixture(scope="module")
def registry_key() -> ServiceKey:
    return ServiceKey.generate()


@pytest.fixture(scope="module")
def worker(sim: SimTdx) -> SimWorker:
    return SimWorker.make(sim)


def view(entries: list[dict[str, Any]], key: ServiceKey) -> RegistryView:
    return RegistryView.from_entries(entries, key.public)


def test_a_good_worker_is_accepted_once_then_from_the_cache(
    sim: SimTdx, registry_key: ServiceKey, worker: SimWorker
) -> None:
    verifier = WorkerVerifier(dev_config(sim, registry_key))
    registry = view(allow_all(registry_key), registry_key)
    evidence, collateral = worker.evidence(), sim.collateral().doc
    check = verifier.verify(evidence, collateral, registry, MODEL)
    assert check.accepted, check.reason
    assert check.development_root and check.tcb_status == "UpToDate"
    assert check.image_hash == IMAGE and check.claims is not None
    assert check.claims.signing_key == worker.keys.public.signing_key
    assert {c["name"] for c in check.checks} >= {"report_data", "debug", "measurements"}
    again = verifier.verify(evidence, collateral, registry, MODEL)
    assert again is check and verifier.verifications == 1
    # A registry change verifies again.
    more = [
        *allow_all(registry_key),
        registry_entry(registry_key, "TCB_STATUS", "OutOfDate", version=3),
    ]
    assert verifier.verify(evidence, collateral, view(more, registry_key), MODEL).accepted
    assert verifier.verifications == 2


def refusal(
    sim: SimTdx,
    key: ServiceKey,
    evidence: Evidence,
    *,
    entries: list[dict[str, Any]] | None = None,
    collateral: dict[str, Any] | None = None,
    dev_root: bool = True,
) -> str:
    verifier = WorkerVerifier(dev_config(sim, key, dev_root=dev_root))
    check = verifier.verify(
        evidence,
        collateral or sim.collateral().doc,
        view(allow_all(key) if entries is None else entries, key),
        MODEL,
    )
    assert not check.accepted
    return check.reason


def test_reportdata_that_does_not_match_the_claims_is_refused(
    sim: SimTdx, registry_key: ServiceKey, worker: SimWorker
) -> None:
    other = SimWorker.make(sim, worker.worker_id)
    swapped = Evidence(worker.worker_id, other.claims, worker.evidence().tdx_quote)
    reason = refusal(sim, registry_key, swapped)
    assert reason.startswith("policy: report_data:"), reason


def test_a_measurement_not_in_the_registry_is_refused(
    sim: SimTdx, registry_key: ServiceKey, worker: SimWorker
) -> None:
    entries = [allow_all(registry_key)[1]]  # the model, not the image
    reason = refusal(sim, registry_key, worker.evidence(), entries=entries)
    assert reason.startswith("policy: measurements:") and "not in the registry" in reason


def test_a_revoked_image_is_refused(
    sim: SimTdx, registry_key: ServiceKey, worker: SimWorker
) -> None:
    revoked = registry_entry(registry_key, "IMAGE", IMAGE, allowed=False, version=5)
    entries = [*allow_all(registry_key), revoked]
    reason = refusal(sim, registry_key, worker.evidence(), entries=entries)
    assert "revoked by registry version 5" in reason, reason


def test_a_registry_entry_with_a_bad_signature_is_refused(
    sim: SimTdx, registry_key: ServiceKey, worker: SimWorker
) -> None:
    forged = registry_entry(ServiceKey.generate(), "IMAGE", IMAGE, version=1)
    entries = [forged, allow_all(registry_key)[1]]
    reason = refusal(sim, registry_key, worker.evidence(), entries=entries)
    assert "signature does not verify with the pinned registry key" in reason, reason


def test_collateral_outside_its_validity_window_is_refused(
    sim: SimTdx, registry_key: ServiceKey, worker: SimWorker
) -> None:
    stale = sim.collateral(at=int(time.time()) - 40 * 86400, validity_seconds=30 * 86400).doc
    reason = refusal(sim, registry_key, worker.evidence(), collateral=stale)
    assert reason.startswith("collateral: not valid at"), reason


def test_a_debug_td_is_refused(sim: SimTdx, registry_key: ServiceKey, worker: SimWorker) -> None:
    reason = refusal(sim, registry_key, worker.evidence(debug=True))
    assert "debug" in reason.lower(), reason


def test_a_quote_chaining_to_a_root_other_than_intels_is_refused(
    sim: SimTdx, registry_key: ServiceKey, worker: SimWorker
) -> None:
    reason = refusal(sim, registry_key, worker.evidence(), dev_root=False)
    assert reason.startswith("root: PCK chain ends at") and "does not trust" in reason, reason


def test_an_sgx_quote_is_refused_as_non_tdx_evidence(
    sim: SimTdx, registry_key: ServiceKey, worker: SimWorker
) -> None:
    chain = dcap_qvl.parse_quote(worker.evidence().tdx_quote).cert_chain_pem_bytes()
    sgx = Evidence(worker.worker_id, worker.claims, sgx_quote(chain))
    assert dcap_qvl.parse_quote(sgx.tdx_quote).is_sgx()
    reason = refusal(sim, registry_key, sgx)
    assert reason == "format: not TDX evidence: a SGX quote", reason


def test_garbage_instead_of_a_quote_is_a_refusal_not_a_crash(
    sim: SimTdx, registry_key: ServiceKey, worker: SimWorker
) -> None:
    reason = refusal(sim, registry_key, Evidence(worker.worker_id, worker.claims, b"\x03" * 700))
    assert reason.startswith("format:"), reason
