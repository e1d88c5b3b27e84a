"""`cocoon client audit`: every kept receipt verified again, then held against the charges.

For each receipt the client kept (receipts.py), after the fact and offline:

* the receipt's Ed25519 signature over its fields verifies;
* the evidence it was sealed under is kept, unchanged (its file's digest is its name);
* that evidence passes verification again, as it did when the request was sealed (same quote,
  claims, collateral and signed registry, at the time it was sealed, against this client's
  roots and registry key), and the key that signed the receipt is the one in its claims.

Then against the account's statement from the gateway (billing's CHARGE entries):

* a charge for a request with no receipt kept here, or charged from a receipt this client never
  received (another attempt's);
* a request charged more than once;
* a charge whose token counts differ from the receipt's.

A receipt with tokens and no charge is listed (billing may not have processed it yet), never a
finding: it costs the client nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cocoon.client.config import ClientConfig
from cocoon.client.errors import WireError
from cocoon.client.receipts import evidence_digest, evidence_of
from cocoon.client.registry import RegistryView
from cocoon.client.seal import verify_receipt
from cocoon.client.verify import WorkerVerifier

TOKEN_FIELDS = ("prompt_tokens", "completion_tokens")


@dataclass(frozen=True)
class Finding:
    kind: str  # bad_receipt | evidence_missing | evidence_rejected | charge_without_receipt
    #            | charged_twice | charge_mismatch
    request_id: str
    detail: str


@dataclass
class ReceiptRow:
    request_id: str
    worker_id: str
    attempt: int
    prompt_tokens: int
    completion_tokens: int
    verified: str  # "yes", or why the chain does not hold
    root: str | None = None
    development_root: bool = False
    tcb_status: str | None = None
    charged_nanoton: int | None = None


@dataclass
class AuditReport:
    rows: list[ReceiptRow] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    charges: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "receipts": [asdict(r) for r in self.rows],
            "charges": self.charges,
            "findings": [asdict(f) for f in self.findings],
        }


class Auditor:
    def __init__(
        self, config: ClientConfig, evidence: Callable[[str], dict[str, Any] | None]
    ) -> None:
        self.config = config
        self.evidence = evidence  # digest -> the kept evidence record (ReceiptStore.evidence)
        self.verifier = WorkerVerifier(config)

    def audit(
        self, receipts: Iterable[dict[str, Any]], charges: Iterable[dict[str, Any]]
    ) -> AuditReport:
        report = AuditReport()
        kept: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for receipt in receipts:
            row, problem = self._check_receipt(receipt)
            report.rows.append(row)
            if problem is not None:
                report.findings.append(problem)
            else:
                kept[row.request_id].append(receipt)
        by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for charge in charges:
            report.charges += 1
            by_request[str(charge.get("request_id"))].append(charge)
        for request_id, charged in by_request.items():
            report.findings += self._check_charges(request_id, charged, kept.get(request_id, []))
        for row in report.rows:
            amounts = [c["charged_nanoton"] for c in by_request.get(row.request_id, [])]
            row.charged_nanoton = sum(amounts) if amounts else None
        return report

    def _check_receipt(self, receipt: dict[str, Any]) -> tuple[ReceiptRow, Finding | None]:
        row = ReceiptRow(
            str(receipt.get("request_id")),
            str(receipt.get("worker_id")),
            int(receipt.get("attempt") or 0),
            int(receipt.get("prompt_tokens") or 0),
            int(receipt.get("completion_tokens") or 0),
            verified="yes",
        )

        def fail(kind: str, detail: str) -> tuple[ReceiptRow, Finding]:
            row.verified = detail
            return row, Finding(kind, row.request_id, detail)

        try:
            signing_key = bytes.fromhex(str(receipt.get("signing_key")))
            verify_receipt(
                receipt,
                signing_key,
                request_id=row.request_id,
                worker_id=row.worker_id,
                attempt=row.attempt,
            )
        except (WireError, ValueError) as exc:
            return fail("bad_receipt", f"the receipt does not verify: {exc}")
        digest = receipt.get("evidence")
        record = self.evidence(digest) if isinstance(digest, str) else None
        if record is None:
            return fail("evidence_missing", "the evidence it was sealed under is not kept")
        if evidence_digest(record) != digest:
            return fail("evidence_rejected", "the kept evidence was changed after it was stored")
        if (record.get("worker_id"), record.get("model")) != (row.worker_id, receipt.get("model")):
            return fail("evidence_rejected", "the kept evidence is for another worker or model")
        try:
            evidence = evidence_of(record)
        except (KeyError, TypeError, ValueError) as exc:
            return fail("evidence_rejected", f"the kept evidence is malformed: {exc!r}")
        registry = RegistryView.from_entries(
            record.get("registry") or [], self.config.registry_public_key
        )
        check = self.verifier.verify(
            evidence,
            record.get("collateral"),
            registry,
            str(record["model"]),
            now=float(receipt.get("sealed_at") or 0),
        )
        row.root, row.development_root, row.tcb_status = (
            check.root,
            check.development_root,
            check.tcb_status,
        )
        if not check.accepted:
            return fail("evidence_rejected", f"the worker's evidence fails again: {check.reason}")
        assert check.claims is not None
        if check.claims.signing_key != signing_key:
            return fail(
                "evidence_rejected", "the receipt's signing key is not the one the quote attests"
            )
        return row, None

    @staticmethod
    def _check_charges(
        request_id: str, charged: list[dict[str, Any]], receipts: list[dict[str, Any]]
    ) -> list[Finding]:
        out = []
        if len(charged) > 1:
            total = sum(c["charged_nanoton"] for c in charged)
            out.append(
                Finding(
                    "charged_twice",
                    request_id,
                    f"charged {len(charged)} times ({total:,} nanoTON in all)",
                )
            )
        by_id = {r["receipt_id"]: r for r in receipts}
        for charge in charged:
            receipt_id = charge.get("receipt_id")
            receipt = by_id.get(receipt_id) if receipt_id else next(iter(receipts), None)
            if receipt is None:
                detail = (
                    f"{charge['charged_nanoton']:,} nanoTON charged with no verified receipt "
                    "kept here" + (f" (billing's receipt: {receipt_id})" if receipt_id else "")
                )
                out.append(Finding("charge_without_receipt", request_id, detail))
                continue
            differ = [
                f"{name} {charge[name]} charged, {receipt[name]} in the receipt"
                for name in TOKEN_FIELDS
                if charge.get(name) is not None and charge[name] != receipt[name]
            ]
            if differ:
                out.append(Finding("charge_mismatch", request_id, "; ".join(differ)))
        return out
