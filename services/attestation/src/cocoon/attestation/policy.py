"""Attestation policy, applied after the DCAP signatures and collateral have been verified.

A production policy trusts only the Intel SGX Root CA (pinned). A development policy may add a
named local test root, but only when it says so explicitly. There is no way to skip the DCAP
verification itself: every policy runs the same checks.

Policy JSON (`Policy.from_dict`; unknown keys are refused so a typo cannot weaken it):

    {
      "name": "production",
      "trusted_roots": ["intel", {"name": "simtdx", "sha256": "…", "pem": "…" | "cert_file": "…"}],
      "allowed_image_hashes": ["<64 hex>", …],
      "allowed_measurements": [{"mrtd": "<96 hex>", "rtmr0": …, …, "rtmr3": …}],
      "accepted_tcb_statuses": ["UpToDate"],
      "allowed_advisories": ["INTEL-SA-…"],
      "mr_service_td": "require-zero",
      "freshness": {"max_age_seconds": 600, "max_skew_seconds": 60},
      "allowed_models": null,
      "require_gpu_cc_models": []
    }

A model listed in `require_gpu_cc_models` is accepted only with a GPU verdict in
`PolicyInput.extra["gpu"]` that accepted the worker's NVIDIA CC evidence
(`cocoon.attestation.gpu.verify.evaluate_gpu`). For any other model, GPU evidence is optional,
but evidence that was presented must verify: a rejected GPU verdict fails the same check.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cocoon.attestation.claims import Claims
from cocoon.attestation.quote import Quote
from cocoon.attestation.roots import INTEL_ROOT, TrustAnchor, TrustError

# Statuses dcap-qvl can return for a valid chain. "Revoked" never reaches policy (dcap fails).
TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
    }
)
# dcap-qvl 0.7's Python API refuses any non-zero MRSERVICETD itself and has no opt-in, so the
# only choice that can be honoured is to require zero; the field exists so the choice is explicit.
MR_SERVICE_TD_CHOICES = frozenset({"require-zero"})
_KEYS = {
    "name",
    "trusted_roots",
    "allowed_image_hashes",
    "allowed_measurements",
    "accepted_tcb_statuses",
    "allowed_advisories",
    "mr_service_td",
    "freshness",
    "allowed_models",
    "require_gpu_cc_models",
}


class PolicyError(ValueError):
    """A policy document that is invalid."""


@dataclass(frozen=True)
class MeasurementSet:
    """An allowed MRTD plus RTMR0..3 (an alternative to an image hash)."""

    mrtd: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> MeasurementSet:
        try:
            vals = [bytes.fromhex(d[k]) for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")]
        except (KeyError, ValueError, TypeError) as exc:
            raise PolicyError(f"measurement set needs mrtd and rtmr0..3 as hex: {exc!r}") from None
        if any(len(v) != 48 for v in vals):
            raise PolicyError("measurement registers are 48 bytes each")
        return cls(vals[0], (vals[1], vals[2], vals[3], vals[4]))

    @classmethod
    def of(cls, quote: Quote) -> MeasurementSet:
        return cls(quote.report.mr_td, quote.report.rtmrs)

    def to_dict(self) -> dict[str, str]:
        out = {"mrtd": self.mrtd.hex()}
        out.update({f"rtmr{i}": r.hex() for i, r in enumerate(self.rtmrs)})
        return out


@dataclass(frozen=True)
class Policy:
    name: str = "production"
    trusted_roots: tuple[TrustAnchor, ...] = (INTEL_ROOT,)
    allowed_image_hashes: frozenset[str] = frozenset()
    allowed_measurements: tuple[MeasurementSet, ...] = ()
    accepted_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    allowed_advisories: frozenset[str] = frozenset()
    mr_service_td: str = "require-zero"
    max_age_seconds: int = 600
    max_skew_seconds: int = 60
    allowed_models: frozenset[str] | None = None  # None: any model (the registry decides)
    require_gpu_cc_models: frozenset[str] = frozenset()  # need verified GPU CC evidence

    def __post_init__(self) -> None:
        if not self.trusted_roots:
            raise PolicyError("a policy must trust at least one root")
        bad = set(self.accepted_tcb_statuses) - TCB_STATUSES
        if bad:
            raise PolicyError(f"unknown TCB statuses {sorted(bad)}; known: {sorted(TCB_STATUSES)}")
        if self.mr_service_td not in MR_SERVICE_TD_CHOICES:
            raise PolicyError(
                f"mr_service_td {self.mr_service_td!r} is not supported "
                f"(choices: {sorted(MR_SERVICE_TD_CHOICES)})"
            )
        if any(len(h) != 64 or h != h.lower() for h in self.allowed_image_hashes):
            raise PolicyError("image hashes are 64 lower-case hex digits")
        if self.max_age_seconds < 0 or self.max_skew_seconds < 0:
            raise PolicyError("freshness bounds must be non-negative")

    @classmethod
    def production(cls, **kw: Any) -> Policy:
        return cls(name="production", trusted_roots=(INTEL_ROOT,), **kw)

    @classmethod
    def development(cls, test_root: TrustAnchor, **kw: Any) -> Policy:
        """Intel's root plus one explicitly named test root (e.g. the simulated TDX's)."""
        return cls(
            name=f"development+{test_root.name}", trusted_roots=(INTEL_ROOT, test_root), **kw
        )

    def anchor_for(self, quote: Quote) -> TrustAnchor | None:
        """The trusted root the quote's PCK chain ends at, matched by DER hash (the pin)."""
        top = quote.pck_chain[-1].public_bytes(Encoding.DER)
        for anchor in self.trusted_roots:
            if anchor.der == top:
                return anchor
        return None

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_dir: Path | None = None) -> Policy:
        if not isinstance(d, dict):
            raise PolicyError("policy must be a JSON object")
        unknown = set(d) - _KEYS
        if unknown:
            raise PolicyError(f"unknown policy keys {sorted(unknown)}")
        fresh = d.get("freshness") or {}
        try:
            return cls(
                name=str(d.get("name", "custom")),
                trusted_roots=tuple(_root(r, base_dir) for r in d.get("trusted_roots", ["intel"])),
                allowed_image_hashes=frozenset(
                    str(h).lower() for h in d.get("allowed_image_hashes", [])
                ),
                allowed_measurements=tuple(
                    MeasurementSet.from_dict(m) for m in d.get("allowed_measurements", [])
                ),
                accepted_tcb_statuses=frozenset(d.get("accepted_tcb_statuses", ["UpToDate"])),
                allowed_advisories=frozenset(d.get("allowed_advisories", [])),
                mr_service_td=str(d.get("mr_service_td", "require-zero")),
                max_age_seconds=int(fresh.get("max_age_seconds", 600)),
                max_skew_seconds=int(fresh.get("max_skew_seconds", 60)),
                allowed_models=(
                    None if d.get("allowed_models") is None else frozenset(d["allowed_models"])
                ),
                require_gpu_cc_models=frozenset(d.get("require_gpu_cc_models", [])),
            )
        except (TypeError, AttributeError) as exc:
            raise PolicyError(f"malformed policy: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise PolicyError(f"cannot read policy {path}: {exc}") from None
        return cls.from_dict(doc, base_dir=path.parent)

    def to_dict(self) -> dict[str, Any]:
        roots: list[Any] = []
        for a in self.trusted_roots:
            if a.is_intel:
                roots.append("intel")
            else:
                pem = x509.load_der_x509_certificate(a.der).public_bytes(Encoding.PEM).decode()
                roots.append({"name": a.name, "sha256": a.sha256, "pem": pem})
        return {
            "name": self.name,
            "trusted_roots": roots,
            "allowed_image_hashes": sorted(self.allowed_image_hashes),
            "allowed_measurements": [m.to_dict() for m in self.allowed_measurements],
            "accepted_tcb_statuses": sorted(self.accepted_tcb_statuses),
            "allowed_advisories": sorted(self.allowed_advisories),
            "mr_service_td": self.mr_service_td,
            "freshness": {
                "max_age_seconds": self.max_age_seconds,
                "max_skew_seconds": self.max_skew_seconds,
            },
            "allowed_models": None if self.allowed_models is None else sorted(self.allowed_models),
            "require_gpu_cc_models": sorted(self.require_gpu_cc_models),
        }


def _root(spec: Any, base_dir: Path | None) -> TrustAnchor:
    if spec == "intel":
        return INTEL_ROOT
    if not isinstance(spec, dict) or "name" not in spec or "sha256" not in spec:
        raise PolicyError('a trusted root is "intel" or {"name", "sha256", "pem"|"cert_file"}')
    try:
        if "pem" in spec:
            return TrustAnchor.from_pem(spec["name"], spec["pem"].encode(), spec["sha256"])
        path = Path(spec["cert_file"])
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return TrustAnchor.from_file(spec["name"], path, spec["sha256"])
    except (KeyError, OSError, TrustError) as exc:
        raise PolicyError(f"trusted root {spec.get('name')!r}: {exc}") from None


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class PolicyInput:
    """What the policy looks at: the parsed quote, DCAP's verdict, the claims, the time."""

    quote: Quote
    tcb_status: str
    advisory_ids: tuple[str, ...]
    claims: Claims | None
    at: int
    nonce_problem: str | None = None  # from the nonce book, when freshness is a nonce
    extra: dict[str, Any] = field(default_factory=dict)


def evaluate(policy: Policy, inp: PolicyInput) -> list[Check]:
    """Every policy check, in the order reasons are reported; the first failure decides."""
    q = inp.quote
    r = q.report
    checks: list[Check] = []

    def add(name: str, ok: bool, detail: str) -> None:
        checks.append(Check(name, ok, detail))

    claims = inp.claims
    if claims is None:
        add("report_data", False, "no claims supplied: REPORTDATA cannot be bound to a key")
    else:
        want = claims.report_data()
        add(
            "report_data",
            want == r.report_data,
            "REPORTDATA == SHA-512(claims)"
            if want == r.report_data
            else f"REPORTDATA {r.report_data.hex()[:16]}… != SHA-512(claims) {want.hex()[:16]}…",
        )
        add("freshness", *_freshness(policy, claims, inp))
        if policy.allowed_models is None or claims.model in policy.allowed_models:
            add("model", True, f"model {claims.model!r} allowed")
        else:
            add("model", False, f"model {claims.model!r} is not allowed by policy")
        gpu = inp.extra.get("gpu")
        if claims.model in policy.require_gpu_cc_models:
            add("gpu_cc", *_gpu_cc(claims.model, gpu))
        elif gpu is not None:  # not required, but evidence that was presented must hold
            add("gpu_cc", *_gpu_optional(gpu))

    add(
        "debug",
        not r.debug,
        "TD is a debug TD (TD_ATTRIBUTES.DEBUG set)" if r.debug else "not debug",
    )
    add(
        "sept_ve_disable",
        r.sept_ve_disable,
        "SEPT_VE_DISABLE set" if r.sept_ve_disable else "SEPT_VE_DISABLE (bit 28) is not set",
    )
    svc = r.mr_service_td
    svc_zero = svc is None or not any(svc)
    add(
        "mr_service_td",
        svc_zero,
        "MRSERVICETD zero or absent" if svc_zero else "non-zero MRSERVICETD (policy: require-zero)",
    )
    status_ok = inp.tcb_status in policy.accepted_tcb_statuses
    add(
        "tcb_status",
        status_ok,
        f"TCB status {inp.tcb_status}"
        + ("" if status_ok else f" not in {sorted(policy.accepted_tcb_statuses)}"),
    )
    stray = sorted(set(inp.advisory_ids) - policy.allowed_advisories)
    add(
        "advisories",
        not stray,
        "all advisories allow-listed" if not stray else f"advisories not allow-listed: {stray}",
    )
    image = q.image_hash().hex()
    if image in policy.allowed_image_hashes:
        add("measurements", True, f"image hash {image} allowed")
    elif MeasurementSet.of(q) in policy.allowed_measurements:
        add("measurements", True, "MRTD and RTMR0..3 match an allowed measurement set")
    else:
        add(
            "measurements",
            False,
            f"image hash {image} is not allowed and MRTD/RTMRs match no allowed set",
        )
    return checks


def _freshness(policy: Policy, claims: Claims, inp: PolicyInput) -> tuple[bool, str]:
    fresh = claims.freshness
    if fresh.nonce is not None:
        if inp.nonce_problem is None:
            return True, "nonce issued by this service and unused"
        return False, inp.nonce_problem
    ts = fresh.timestamp or 0
    if ts > inp.at + policy.max_skew_seconds:
        return False, f"claims timestamp {ts} is in the future (now {inp.at})"
    if ts < inp.at - policy.max_age_seconds:
        return False, f"claims timestamp {ts} is older than {policy.max_age_seconds}s"
    return True, f"claims timestamp within {policy.max_age_seconds}s"


def _gpu_cc(model: str, gpu: Any) -> tuple[bool, str]:
    # `gpu` is a GpuVerdict (duck-typed so this module does not depend on the GPU package).
    if gpu is None:
        return False, f"model {model!r} requires a GPU in CC mode; no GPU evidence was verified"
    if not gpu.accepted:
        return (
            False,
            f"model {model!r} requires a GPU in CC mode; GPU evidence rejected at "
            f"{gpu.stage}: {gpu.reason}",
        )
    return True, "GPU in CC mode verified"


def _gpu_optional(gpu: Any) -> tuple[bool, str]:
    if not gpu.accepted:
        return False, f"GPU evidence rejected at {gpu.stage}: {gpu.reason}"
    return True, "GPU in CC mode verified (not required for this model)"


def first_failure(checks: Iterable[Check]) -> Check | None:
    return next((c for c in checks if not c.ok), None)
