"""`cocoon client audit` after the fact: the receipts a request left behind verify again from the
evidence they were sealed under, and every tampering or billing discrepancy is a finding with
its reason (the gateway's real statement is exercised in tests/e2e/test_client_path.py)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from client_support import MODEL, SimWorker, dev_config
from test_client_proxy import GatewayAndWorker

from cocoon.attestation.simtdx import SimTdx
from cocoon.attestation.verdicts import ServiceKey
from cocoon.client.audit import Auditor, AuditReport
from cocoon.client.config import ClientConfig
from cocoon.client.receipts import ReceiptStore, evidence_digest
from cocoon.client.session import SealedSession


@dataclass
class Kept:
    store: ReceiptStore
    config: ClientConfig
    receipt: dict[str, Any]

    def charge(self, **changes: Any) -> dict[str, Any]:
        """The statement line billing's charge of this receipt becomes at the gateway."""
        r = self.receipt
        return {
            "entry_id": f"charge:{r['request_id']}@demo",
            "cause_id": f"charge:{r['request_id']}",
            "request_id": r["request_id"],
            "charged_nanoton": 2_400,
            "created_at": r["finished_at"] + 5,
            "receipt_id": r["receipt_id"],
            "worker_id": r["worker_id"],
            "model": r["model"],
            "prompt_tokens": r["prompt_tokens"],
            "completion_tokens": r["completion_tokens"],
            **changes,
        }

    def audit(self, charges: list[dict[str, Any]], config: ClientConfig | None = None):
        return Auditor(config or self.config, self.store.evidence).audit(self.store.all(), charges)

    def rewrite_receipt(self, **changes: Any) -> None:
        line = {**self.store.all()[0], **changes}
        self.store.path.write_text(json.dumps(line) + "\n")

    def rewrite_evidence(self, change) -> None:
        """Store an altered copy of the evidence (under its own digest, as if the client had
        kept it) and point the receipt at it."""
        record = self.store.evidence(self.receipt["evidence"])
        assert record is not None
        change(record)
        digest = evidence_digest(record)
        (self.store.evidence_dir / f"{digest}.json").write_text(json.dumps(record))
        self.rewrite_receipt(evidence=digest)


@pytest.fixture
async def kept(sim: SimTdx, tmp_path: Path) -> Kept:
    """One real request sealed to a simulated worker; its receipt and evidence are kept."""
    key = ServiceKey.generate()
    fake = GatewayAndWorker(sim, key, SimWorker.make(sim, "w-sim-1"))
    store = ReceiptStore(tmp_path / "receipts.jsonl")
    config = dev_config(sim, key)
    session = SealedSession(
        "http://gateway.test",
        "sk-cocoon-good",
        config,
        http=httpx.AsyncClient(transport=httpx.MockTransport(fake.handle)),
        receipts=store,
    )
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    async for _ in session.stream("chat.completions", body):
        pass
    await session.aclose()
    [receipt] = store.all()
    return Kept(store, config, receipt)


def findings(report: AuditReport) -> list[tuple[str, str]]:
    return [(f.kind, f.detail) for f in report.findings]


def test_a_receipt_with_its_charge_verifies_from_the_kept_evidence(kept: Kept) -> None:
    assert kept.receipt["evidence"] and kept.receipt["sealed_at"]
    report = kept.audit([kept.charge()])
    assert findings(report) == []
    [row] = report.rows
    assert row.verified == "yes" and row.development_root and row.tcb_status == "UpToDate"
    assert row.charged_nanoton == 2_400


def test_a_receipt_whose_tokens_were_changed_fails_its_signature(kept: Kept) -> None:
    kept.rewrite_receipt(completion_tokens=kept.receipt["completion_tokens"] + 1)
    [(kind, detail)] = findings(kept.audit([]))
    assert kind == "bad_receipt" and "signature does not verify" in detail


def test_a_receipt_with_a_forged_signature_is_a_finding(kept: Kept) -> None:
    signature = bytearray(bytes.fromhex(kept.receipt["signature"]))
    signature[0] ^= 1
    kept.rewrite_receipt(signature=signature.hex())
    [(kind, _)] = findings(kept.audit([]))
    assert kind == "bad_receipt"


def test_evidence_edited_in_place_is_a_finding(kept: Kept) -> None:
    path = kept.store.evidence_dir / f"{kept.receipt['evidence']}.json"
    record = json.loads(path.read_text())
    record["model"] = "another-model"
    path.write_text(json.dumps(record))
    [(kind, detail)] = findings(kept.audit([]))
    assert kind == "evidence_rejected" and "changed after it was stored" in detail


def test_missing_evidence_is_a_finding(kept: Kept) -> None:
    (kept.store.evidence_dir / f"{kept.receipt['evidence']}.json").unlink()
    [(kind, _)] = findings(kept.audit([]))
    assert kind == "evidence_missing"


def test_a_tampered_quote_fails_verification_again(kept: Kept) -> None:
    def flip_report_data(record: dict[str, Any]) -> None:
        quote = bytearray(base64.b64decode(record["tdx_quote"]))
        quote[48 + 520] ^= 1  # a byte of REPORTDATA (TD report body offset 520)
        record["tdx_quote"] = base64.b64encode(bytes(quote)).decode()

    kept.rewrite_evidence(flip_report_data)
    [(kind, detail)] = findings(kept.audit([]))
    assert kind == "evidence_rejected" and "dcap" in detail


def test_a_forged_registry_signature_fails_verification_again(kept: Kept) -> None:
    def forge_image_entry(record: dict[str, Any]) -> None:
        for entry in record["registry"]:
            if entry["kind"] == "IMAGE":
                signature = bytearray(base64.b64decode(entry["signature"]))
                signature[0] ^= 1
                entry["signature"] = base64.b64encode(bytes(signature)).decode()

    kept.rewrite_evidence(forge_image_entry)
    [(kind, detail)] = findings(kept.audit([]))
    assert kind == "evidence_rejected"
    assert "measurements" in detail and "refused" in detail


def test_evidence_from_a_root_this_client_does_not_trust_is_a_finding(kept: Kept) -> None:
    production = ClientConfig(kept.config.registry_public_key)  # Intel's root only
    [(kind, detail)] = findings(kept.audit([], production))
    assert kind == "evidence_rejected" and "root" in detail


def test_a_receipt_signed_by_a_key_the_quote_does_not_attest_is_a_finding(
    kept: Kept, sim: SimTdx
) -> None:
    # Another worker's genuine evidence, kept for this receipt.
    other = SimWorker.make(sim, "w-sim-1").evidence()

    def swap(record: dict[str, Any]) -> None:
        record["claims"] = base64.b64encode(other.claims).decode()
        record["tdx_quote"] = base64.b64encode(other.tdx_quote).decode()

    kept.rewrite_evidence(swap)
    [(kind, detail)] = findings(kept.audit([]))
    assert kind == "evidence_rejected" and "signing key" in detail


def test_a_charge_without_a_receipt_is_a_finding(kept: Kept) -> None:
    stranger = kept.charge(request_id="00000000-0000-4000-8000-000000000000", receipt_id="x:1")
    [(kind, detail)] = findings(kept.audit([kept.charge(), stranger]))
    assert kind == "charge_without_receipt" and "2,400 nanoTON" in detail


def test_a_charge_from_a_receipt_the_client_never_received_is_a_finding(kept: Kept) -> None:
    other_attempt = kept.charge(receipt_id=f"{kept.receipt['request_id']}:2")
    [(kind, _)] = findings(kept.audit([other_attempt]))
    assert kind == "charge_without_receipt"


def test_a_request_charged_twice_is_a_finding(kept: Kept) -> None:
    report = kept.audit([kept.charge(), kept.charge(entry_id="again")])
    [(kind, detail)] = findings(report)
    assert kind == "charged_twice" and "4,800" in detail
    assert report.rows[0].charged_nanoton == 4_800


def test_a_charge_for_other_token_counts_is_a_finding(kept: Kept) -> None:
    more = kept.charge(completion_tokens=kept.receipt["completion_tokens"] + 10)
    [(kind, detail)] = findings(kept.audit([more]))
    assert kind == "charge_mismatch" and "completion_tokens" in detail


def test_a_receipt_not_charged_yet_is_listed_not_a_finding(kept: Kept) -> None:
    report = kept.audit([])
    assert findings(report) == [] and report.rows[0].charged_nanoton is None
