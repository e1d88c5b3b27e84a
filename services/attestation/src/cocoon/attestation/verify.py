"""Quote verification: DCAP (dcap-qvl) first, then policy. One code path for every root.

    verifier = Verifier(policy, BundleSource.from_file("collateral.json"))
    verdict = verifier.verify(quote_bytes, claims, at=int(time.time()))
    verdict.accepted, verdict.reason

Steps, each with its own reason on failure: parse (QuoteFormatError) → the PCK chain must end at
a root the policy trusts (matched by the DER's SHA-256) → collateral for the quote's FMSPC →
the verification time must lie inside the collateral's validity window → dcap-qvl verifies the
quote and QE report signatures, the PCK chain and the TCB info / QE identity issuer chains up to
that root, CRLs, and the TCB level → policy (REPORTDATA, freshness, debug, SEPT_VE_DISABLE,
MRSERVICETD, TCB status, advisories, measurements, model).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import dcap_qvl

from cocoon.attestation.claims import Claims
from cocoon.attestation.collateral import Collateral, CollateralError, CollateralSource
from cocoon.attestation.freshness import NonceBook
from cocoon.attestation.policy import Check, Policy, PolicyInput, evaluate, first_failure
from cocoon.attestation.quote import Quote, QuoteFormatError, parse_quote
from cocoon.attestation.roots import TrustAnchor

VERDICT_SCHEMA = "cocoon.attestation.verdict/1"


@dataclass(frozen=True)
class DcapResult:
    status: str
    advisory_ids: tuple[str, ...]


class DcapError(ValueError):
    """dcap-qvl refused the quote (signature, chain, CRL, collateral or TCB matching)."""


def dcap_verify(quote: Quote, collateral: Collateral, root: TrustAnchor, at: int) -> DcapResult:
    """Signatures, chains and TCB level via dcap-qvl against exactly `root`."""
    try:
        report = dcap_qvl.verify_with_root_ca(quote.raw, collateral.dcap, root.der, int(at))
    except ValueError as exc:
        raise DcapError(str(exc)) from None
    return DcapResult(str(report.status), tuple(str(a) for a in report.advisory_ids))


@dataclass
class Verdict:
    """The outcome of one verification; `to_dict()` is the stable JSON form."""

    accepted: bool
    reason: str
    stage: str  # format | root | collateral | dcap | policy | accepted
    policy: str
    verified_at: int
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    image_hash: str | None = None
    measurements: dict[str, str] = field(default_factory=dict)
    quote_sha256: str | None = None
    quote_version: int | None = None
    td_report_version: str | None = None
    fmspc: str | None = None
    root: str | None = None
    collateral_not_after: int | None = None
    report_data: str | None = None
    claims: dict[str, Any] | None = None
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["advisory_ids"] = list(self.advisory_ids)
        d["checks"] = [asdict(c) for c in self.checks]
        return {"schema": VERDICT_SCHEMA, **d}


class Verifier:
    def __init__(
        self, policy: Policy, collateral: CollateralSource, nonces: NonceBook | None = None
    ) -> None:
        self.policy = policy
        self.collateral = collateral
        self.nonces = nonces

    def verify(
        self,
        quote: bytes | Quote,
        claims: Claims | None,
        at: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Verdict:
        """`extra` goes to the policy as `PolicyInput.extra` (e.g. `{"gpu": GpuVerdict}`)."""
        at = int(time.time()) if at is None else int(at)
        verdict = Verdict(False, "", "format", self.policy.name, at)
        try:
            q = quote if isinstance(quote, Quote) else parse_quote(quote)
        except QuoteFormatError as exc:
            verdict.reason = f"malformed quote: {exc}"
            return verdict
        self._describe(verdict, q, claims)

        verdict.stage = "root"
        anchor = self.policy.anchor_for(q)
        if anchor is None:
            verdict.reason = (
                f"PCK chain ends at {q.pck_chain[-1].subject.rfc4514_string()!r}, "
                f"which policy {self.policy.name!r} does not trust"
            )
            return verdict
        verdict.root = anchor.name

        verdict.stage = "collateral"
        try:
            col = self.collateral.get(q, at)
        except CollateralError as exc:
            verdict.reason = f"collateral unavailable: {exc}"
            return verdict
        verdict.collateral_not_after = col.not_after
        if not col.covers(at):
            verdict.reason = (
                f"collateral is not valid at {at}: valid {col.not_before}..{col.not_after}"
            )
            return verdict

        verdict.stage = "dcap"
        try:
            dcap = dcap_verify(q, col, anchor, at)
        except DcapError as exc:
            verdict.reason = f"DCAP verification failed: {exc}"
            return verdict
        verdict.tcb_status = dcap.status
        verdict.advisory_ids = dcap.advisory_ids

        verdict.stage = "policy"
        nonce_problem = None
        nonce = claims.freshness.nonce if claims is not None else None
        if nonce is not None:
            nonce_problem = (
                "no nonce book: nonce freshness cannot be checked"
                if self.nonces is None
                else self.nonces.check(nonce, at)
            )
        checks = evaluate(
            self.policy,
            PolicyInput(
                q, dcap.status, dcap.advisory_ids, claims, at, nonce_problem, dict(extra or {})
            ),
        )
        verdict.checks = checks
        failed = first_failure(checks)
        if failed is not None:
            verdict.reason = f"{failed.name}: {failed.detail}"
            return verdict
        if nonce is not None and self.nonces is not None and not self.nonces.consume(nonce):
            verdict.reason = "freshness: nonce was consumed concurrently"
            return verdict
        verdict.stage = "accepted"
        verdict.accepted = True
        verdict.reason = "accepted"
        return verdict

    @staticmethod
    def _describe(verdict: Verdict, q: Quote, claims: Claims | None) -> None:
        verdict.image_hash = q.image_hash().hex()
        verdict.measurements = q.measurements()
        verdict.quote_sha256 = q.digest.hex()
        verdict.quote_version = q.version
        verdict.td_report_version = q.td_report_version
        verdict.fmspc = q.pck.fmspc.hex()
        verdict.report_data = q.report.report_data.hex()
        verdict.claims = claims.to_dict() if claims is not None else None
