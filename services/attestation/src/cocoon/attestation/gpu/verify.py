"""GPU evidence verification: parse → nonce → pinned root → chain → report signature → FWID
binding → OCSP → reference measurements. The first failure sets the verdict's stage and reason.

    policy = GpuPolicy.offline(RimFiles.from_dir("rims/"), OcspResponses.from_files(paths))
    verdict = evaluate_gpu(evidence, expected_nonce=gpu_nonce(claims), policy=policy)

Reference measurements and OCSP are always checked: a policy chooses only where they come from
(an NVIDIA-shaped service at a configurable URL, or files supplied offline).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from cocoon.attestation.claims import Claims
from cocoon.attestation.gpu.certs import (
    MALFORMED,
    NVIDIA_DEVICE_ROOT,
    anchor_for,
    leaf_fwids,
    load_chain,
    verify_chain,
    verify_report_signature,
)
from cocoon.attestation.gpu.ocsp import OcspResponses, OcspService, OcspSource, check_chain
from cocoon.attestation.gpu.report import NONCE_LEN, GpuEvidenceError, GpuReport, parse_report
from cocoon.attestation.gpu.rim import RimFiles, RimService, RimSource, golden_for, mismatches
from cocoon.attestation.policy import Check
from cocoon.attestation.roots import TrustAnchor, TrustError
from cocoon.core import gpu_evidence as wire

GPU_VERDICT_SCHEMA = "cocoon.attestation.gpu-verdict/1"
NVIDIA_RIM_SERVICE = "https://rim.attestation.nvidia.com"
NVIDIA_OCSP_SERVICE = "https://ocsp.ndis.nvidia.com/"
_NONCE_DOMAIN = wire.GPU_NONCE_DOMAIN


def gpu_nonce(claims: Claims) -> bytes:
    """The 32-byte nonce a worker passes to the GPU: binds the GPU report to the same claims
    (keys, model, freshness) as the TDX quote, so it cannot be replayed for another worker.
    Workers compute it from the claims bytes with `cocoon.core.gpu_evidence.gpu_nonce`."""
    return hashlib.sha256(_NONCE_DOMAIN + claims.report_data()).digest()


@dataclass(frozen=True)
class GpuEvidence:
    report: bytes  # raw SPDM request ‖ response, as the driver returns it
    cert_chain: bytes  # leaf-first PEM or concatenated DER

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GpuEvidence:
        """{"report": hex, "cert_chain": PEM text | base64 of concatenated DER}."""
        try:
            report = bytes.fromhex(str(d["report"]).removeprefix("0x"))
            chain_text = str(d["cert_chain"])
            chain = (
                chain_text.encode()
                if "-----BEGIN" in chain_text
                else base64.b64decode(chain_text, validate=True)
            )
        except (KeyError, ValueError, TypeError, binascii.Error) as exc:
            raise GpuEvidenceError(f"bad GPU evidence document: {exc!r}") from None
        return cls(report, chain)

    @classmethod
    def decode(cls, data: bytes) -> GpuEvidence:
        """From `Evidence.gpu_evidence` (`cocoon/gpu-evidence/v1`, cocoon.core.gpu_evidence)."""
        try:
            return cls(*wire.decode_gpu_evidence(data))
        except wire.GpuEvidenceFormatError as exc:
            raise GpuEvidenceError(f"malformed GPU evidence container: {exc}") from None

    def encode(self) -> bytes:
        """The `Evidence.gpu_evidence` bytes (what a worker sends)."""
        try:
            return wire.encode_gpu_evidence(self.report, self.cert_chain)
        except wire.GpuEvidenceFormatError as exc:
            raise GpuEvidenceError(str(exc)) from None


@dataclass(frozen=True)
class GpuPolicy:
    rims: RimSource
    ocsp: OcspSource
    trusted_roots: tuple[TrustAnchor, ...] = (NVIDIA_DEVICE_ROOT,)
    name: str = "nvidia"

    def __post_init__(self) -> None:
        if not self.trusted_roots:
            raise GpuEvidenceError("a GPU policy must trust at least one root")

    def offline_sources(self) -> bool:
        """True when RIMs and OCSP come from files: evaluation does no network I/O."""
        return isinstance(self.rims, RimFiles) and isinstance(self.ocsp, OcspResponses)

    @classmethod
    def from_file(cls, path: str | Path) -> GpuPolicy:
        """A JSON policy file (`from_dict`); relative paths are resolved from its directory."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise GpuEvidenceError(f"cannot read GPU policy {path}: {exc}") from None
        return cls.from_dict(doc, base_dir=path.parent)

    @classmethod
    def online(
        cls, rim_url: str = NVIDIA_RIM_SERVICE, ocsp_url: str = NVIDIA_OCSP_SERVICE, **kw: Any
    ) -> GpuPolicy:
        return cls(RimService(rim_url), OcspService(ocsp_url), **kw)

    @classmethod
    def offline(cls, rims: RimFiles, ocsp: OcspResponses, **kw: Any) -> GpuPolicy:
        return cls(rims, ocsp, **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_dir: Path | None = None) -> GpuPolicy:
        """{"trusted_roots": ["nvidia" | {"name","sha256","pem"|"cert_file"}],
        "rim": {"url": U} | {"dir": D} | {"files": {id: path}},
        "ocsp": {"url": U, "nonce": bool} | {"files": [path, …]}}"""
        base = base_dir or Path(".")
        try:
            rim, oc = d["rim"], d["ocsp"]
            rims: RimSource = (
                RimService(rim["url"])
                if "url" in rim
                else RimFiles.from_dir(base / rim["dir"])
                if "dir" in rim
                else RimFiles({k: base / v for k, v in rim["files"].items()})
            )
            ocsp: OcspSource = (
                OcspService(oc["url"], nonce=bool(oc.get("nonce", True)))
                if "url" in oc
                else OcspResponses.from_files(base / p for p in oc["files"])
            )
            roots = tuple(_root(r, base) for r in d.get("trusted_roots", ["nvidia"]))
        except (KeyError, TypeError, AttributeError, OSError, TrustError) as exc:
            raise GpuEvidenceError(f"bad GPU policy: {exc!r}") from None
        return cls(rims, ocsp, roots, str(d.get("name", "custom")))


def _root(spec: Any, base: Path) -> TrustAnchor:
    if spec == "nvidia":
        return NVIDIA_DEVICE_ROOT
    if "pem" in spec:
        return TrustAnchor.from_pem(spec["name"], spec["pem"].encode(), spec["sha256"])
    return TrustAnchor.from_file(spec["name"], base / spec["cert_file"], spec["sha256"])


@dataclass
class GpuVerdict:
    accepted: bool
    reason: str
    stage: str  # format|nonce|root|chain|signature|fwid|ocsp|measurements|accepted
    policy: str
    verified_at: int
    report_sha256: str | None = None
    driver_version: str | None = None
    vbios_version: str | None = None
    root: str | None = None
    mismatched_indices: list[int] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = [asdict(c) for c in self.checks]
        return {"schema": GPU_VERDICT_SCHEMA, **d}


def evaluate_gpu(
    evidence: GpuEvidence | None,
    expected_nonce: bytes,
    policy: GpuPolicy,
    at: datetime | None = None,
) -> GpuVerdict:
    """Verify GPU evidence; never raises for bad evidence (the verdict carries the reason)."""
    at = at or datetime.now(UTC)
    v = GpuVerdict(False, "", "format", policy.name, int(at.timestamp()))

    def fail(stage: str, reason: str) -> GpuVerdict:
        v.stage, v.reason = stage, reason
        v.checks.append(Check(stage, False, reason))
        return v

    def ok(stage: str, detail: str) -> None:
        v.checks.append(Check(stage, True, detail))

    if evidence is None:
        return fail("format", "no GPU evidence supplied")
    try:
        report = parse_report(evidence.report)
        chain = load_chain(evidence.cert_chain)
    except GpuEvidenceError as exc:
        return fail("format", str(exc))
    v.report_sha256 = report.sha256
    v.driver_version, v.vbios_version = report.driver_version, report.vbios_version
    ok("format", f"SPDM 1.1 report, {len(report.blocks)} measurements, {len(chain)} certificates")

    if len(expected_nonce) != NONCE_LEN or report.nonce != expected_nonce:
        return fail("nonce", f"report nonce {report.nonce.hex()[:16]}… is not the expected one")
    ok("nonce", "report nonce matches")
    steps = (
        ("root", lambda: _root_step(v, chain, policy)),
        ("chain", lambda: _chain_step(chain, at)),
        ("signature", lambda: _signature_step(report, chain)),
        ("fwid", lambda: _fwid_step(report, chain)),
        ("ocsp", lambda: _ocsp_step(chain, policy, at)),
        ("measurements", lambda: _measurement_step(v, report, policy)),
    )
    for stage, step in steps:
        try:
            ok(stage, step())
        except MALFORMED as exc:  # includes GpuEvidenceError; certificates parse lazily
            return fail(stage, str(exc) or type(exc).__name__)
    v.accepted, v.stage, v.reason = True, "accepted", "GPU evidence verified (CC report)"
    return v


def _root_step(v: GpuVerdict, chain: list[x509.Certificate], policy: GpuPolicy) -> str:
    anchor = anchor_for(chain, policy.trusted_roots)
    v.root = anchor.name
    return f"chain ends at pinned root {anchor.name}"


def _chain_step(chain: list[x509.Certificate], at: datetime) -> str:
    verify_chain(chain, at)
    return "every link verifies (ECDSA P-384, SHA-384) and is valid at the verification time"


def _signature_step(report: GpuReport, chain: list[x509.Certificate]) -> str:
    verify_report_signature(report, chain[0])
    return "report signed by the attestation key"


def _fwid_step(report: GpuReport, chain: list[x509.Certificate]) -> str:
    fwid = report.fwid
    if fwid is None:
        return "report carries no FWID (older firmware)"
    if fwid not in leaf_fwids(chain[0]):
        raise GpuEvidenceError("report FWID does not match the attestation certificate's")
    return "report FWID matches the attestation certificate"


def _ocsp_step(chain: list[x509.Certificate], policy: GpuPolicy, at: datetime) -> str:
    results = check_chain(chain, policy.ocsp, at)
    return f"{len(results)} certificates GOOD by OCSP"


def _measurement_step(v: GpuVerdict, report: GpuReport, policy: GpuPolicy) -> str:
    golden = golden_for(report, policy.rims)
    bad = mismatches(report, golden)
    if bad:
        v.mismatched_indices = bad
        raise GpuEvidenceError(f"measurements at indices {bad} match no reference value")
    return f"{len(golden)} measurements match the driver and VBIOS RIMs"
