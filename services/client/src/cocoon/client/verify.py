"""The client verifies every worker itself before it seals a prompt to it.

    verifier = WorkerVerifier(config)
    check = verifier.verify(evidence, collateral_doc, registry_view, model, now)
    check.accepted, check.reason, check.keys

Stages, the first failure gives the reason (`<stage>: <detail>`):

1. format      the quote parses (dcap-qvl) and is a TDX quote (an SGX quote is refused here)
2. root        its PCK chain ends, byte for byte, at a root of the client's configuration
3. collateral  the collateral the gateway served is for the quote's FMSPC and valid now
               (TCB info and QE identity issueDate..nextUpdate, both CRLs thisUpdate..nextUpdate)
4. dcap        dcap-qvl checks quote, QE report, PCK chain, TCB info and QE identity signatures
               up to exactly that root, the CRLs, and the TCB level
5. policy      report_data (REPORTDATA = SHA-512 of the claims), model, debug, sept_ve_disable,
               tcb_status, advisories, measurements (image hash or MRTD/RTMR set in the signed
               registry; a revoked image and an entry with a bad signature say so), freshness,
               gpu_cc

Results are cached per (quote, claims, collateral, registry): the common request adds no
verification work, and a new collateral or registry version verifies again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cocoon.client.claims import WorkerClaims
from cocoon.client.config import ClientConfig
from cocoon.client.errors import WireError
from cocoon.client.registry import RegistryView, measurement_id
from cocoon.client.roots import TrustRoot

TDX_TEE_TYPE = 0x81
TD_ATTR_DEBUG = 1 << 0
TD_ATTR_SEPT_VE_DISABLE = 1 << 28
MAX_SKEW_SECONDS = 60
_COLLATERAL_FIELDS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)


@dataclass(frozen=True)
class Evidence:
    """What the gateway serves per worker: the attested claims and the quote over them."""

    worker_id: str
    claims: bytes
    tdx_quote: bytes
    gpu_evidence: bytes | None = None


@dataclass
class WorkerCheck:
    worker_id: str
    accepted: bool = False
    stage: str = "format"
    reason: str = ""
    claims: WorkerClaims | None = None
    root: str | None = None
    development_root: bool = False
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    image_hash: str | None = None
    measurements: dict[str, str] = field(default_factory=dict)
    fmspc: str | None = None
    collateral_window: tuple[int, int] | None = None
    registry_version: int = 0
    checks: list[dict[str, Any]] = field(default_factory=list)
    valid_until: float = 0.0  # cache lifetime (collateral end, evidence age limit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "accepted": self.accepted,
            "stage": self.stage,
            "reason": self.reason,
            "model": self.claims.model if self.claims else None,
            "root": self.root,
            "development_root": self.development_root,
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "image_hash": self.image_hash,
            "measurements": self.measurements,
            "fmspc": self.fmspc,
            "collateral_window": list(self.collateral_window) if self.collateral_window else None,
            "registry_version": self.registry_version,
            "gpu_evidence": "not verified by this client",
            "checks": self.checks,
        }


def _rfc3339(value: Any) -> int:
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())


def collateral_window(doc: dict[str, Any]) -> tuple[int, int]:
    """[latest start, earliest end] over TCB info, QE identity and both CRLs."""
    try:
        tcb, qe = json.loads(doc["tcb_info"]), json.loads(doc["qe_identity"])
        starts = [_rfc3339(tcb["issueDate"]), _rfc3339(qe["issueDate"])]
        ends = [_rfc3339(tcb["nextUpdate"]), _rfc3339(qe["nextUpdate"])]
        for name in ("root_ca_crl", "pck_crl"):
            crl = x509.load_der_x509_crl(bytes.fromhex(doc[name]))
            if crl.next_update_utc is None:
                raise WireError(f"{name} has no nextUpdate")
            starts.append(int(crl.last_update_utc.timestamp()))
            ends.append(int(crl.next_update_utc.timestamp()))
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"malformed collateral: {exc!r}") from None
    return max(starts), min(ends)


def _hex(value: Any) -> str:
    return bytes(value).hex()


class WorkerVerifier:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._roots = {root.sha256: root for root in config.roots}
        self._cache: dict[tuple[str, ...], WorkerCheck] = {}
        self.verifications = 0  # full verifications run (the rest came from the cache)

    def verify(
        self,
        evidence: Evidence,
        collateral: dict[str, Any] | None,
        registry: RegistryView,
        model: str,
        now: float | None = None,
    ) -> WorkerCheck:
        now = time.time() if now is None else now
        key = (
            evidence.worker_id,
            hashlib.sha256(evidence.tdx_quote).hexdigest(),
            hashlib.sha256(evidence.claims).hexdigest(),
            hashlib.sha256(json.dumps(collateral, sort_keys=True).encode()).hexdigest(),
            registry.digest,
            model,
        )
        cached = self._cache.get(key)
        if cached is not None and now <= cached.valid_until:
            return cached
        self.verifications += 1
        check = self._verify(evidence, collateral, registry, model, int(now))
        if check.accepted:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = check
        return check

    # -- the stages ----------------------------------------------------------------------------
    def _verify(
        self,
        evidence: Evidence,
        collateral: dict[str, Any] | None,
        registry: RegistryView,
        model: str,
        at: int,
    ) -> WorkerCheck:
        check = WorkerCheck(evidence.worker_id, registry_version=registry.version)

        def refuse(stage: str, reason: str) -> WorkerCheck:
            check.stage, check.reason = stage, f"{stage}: {reason}"
            return check

        try:
            quote = dcap_qvl.parse_quote(bytes(evidence.tdx_quote))
        except ValueError as exc:
            return refuse("format", f"malformed quote: {exc}")
        if not quote.is_tdx() or quote.header.tee_type != TDX_TEE_TYPE:
            return refuse("format", f"not TDX evidence: a {quote.quote_type()} quote")
        report = quote.report
        try:
            check.claims = WorkerClaims.decode(evidence.claims)
        except WireError as exc:
            return refuse("format", f"malformed claims: {exc}")
        self._describe(check, quote, report)

        root = self._root_of(quote)
        if isinstance(root, str):
            return refuse("root", root)
        check.root, check.development_root = root.name, root.development

        if collateral is None:
            return refuse("collateral", f"the gateway has no collateral for FMSPC {check.fmspc}")
        try:
            start, end = collateral_window(collateral)
            tcb_fmspc = str(json.loads(collateral["tcb_info"]).get("fmspc", "")).lower()
            parsed = dcap_qvl.QuoteCollateralV3.from_json(
                json.dumps({k: collateral[k] for k in _COLLATERAL_FIELDS})
            )
        except (WireError, KeyError, TypeError, ValueError) as exc:
            return refuse("collateral", f"unusable: {exc}")
        check.collateral_window = (start, end)
        if tcb_fmspc != check.fmspc:
            return refuse("collateral", f"TCB info is for FMSPC {tcb_fmspc}, not {check.fmspc}")
        if not start <= at <= end:
            return refuse("collateral", f"not valid at {at}: valid {start}..{end}")

        try:
            dcap = dcap_qvl.verify_with_root_ca(bytes(evidence.tdx_quote), parsed, root.der, at)
        except ValueError as exc:
            return refuse("dcap", f"DCAP verification failed: {exc}")
        check.tcb_status = str(dcap.status)
        check.advisory_ids = tuple(str(a) for a in dcap.advisory_ids)

        check.stage = "policy"
        check.checks = self._policy(check, report, registry, model, at)
        failed = next((c for c in check.checks if not c["ok"]), None)
        if failed is not None:
            return refuse("policy", f"{failed['name']}: {failed['detail']}")
        check.accepted, check.stage, check.reason = True, "accepted", "accepted"
        valid_until = float(end)
        if check.claims.timestamp is not None:
            valid_until = min(
                valid_until, check.claims.timestamp + self.config.max_evidence_age_seconds
            )
        check.valid_until = valid_until
        return check

    def _describe(self, check: WorkerCheck, quote: Any, report: Any) -> None:
        m = {
            "mrtd": _hex(report.mr_td),
            "mrconfigid": _hex(report.mr_config_id),
            "mrowner": _hex(report.mr_owner),
            "mrownerconfig": _hex(report.mr_owner_config),
            "rtmr0": _hex(report.rt_mr0),
            "rtmr1": _hex(report.rt_mr1),
            "rtmr2": _hex(report.rt_mr2),
            "rtmr3": _hex(report.rt_mr3),
        }
        check.measurements = m
        order = (
            "mrtd",
            "mrconfigid",
            "mrowner",
            "mrownerconfig",
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3",
        )
        check.image_hash = hashlib.sha256(
            b"".join(bytes.fromhex(m[k]) for k in order) + bytes(64)
        ).hexdigest()
        try:
            check.fmspc = quote.fmspc().lower()
        except ValueError:
            check.fmspc = None

    def _root_of(self, quote: Any) -> TrustRoot | str:
        pem = quote.cert_chain_pem_bytes()
        if not pem:
            return "the quote carries no PCK certificate chain"
        try:
            chain = x509.load_pem_x509_certificates(pem)
        except ValueError as exc:
            return f"unreadable PCK chain: {exc}"
        last = chain[-1]
        root = self._roots.get(hashlib.sha256(last.public_bytes(Encoding.DER)).hexdigest())
        if root is None:
            return (
                f"PCK chain ends at {last.subject.rfc4514_string()!r}, which this client does "
                "not trust (its roots: " + ", ".join(r.name for r in self.config.roots) + ")"
            )
        return root

    def _policy(
        self, check: WorkerCheck, report: Any, registry: RegistryView, model: str, at: int
    ) -> list[dict[str, Any]]:
        claims = check.claims
        assert claims is not None
        out: list[dict[str, Any]] = []

        def add(name: str, ok: bool, detail: str) -> None:
            out.append({"name": name, "ok": ok, "detail": detail})

        rd = bytes(report.report_data)
        add(
            "report_data",
            rd == claims.report_data(),
            "REPORTDATA = SHA-512(claims)"
            if rd == claims.report_data()
            else "REPORTDATA does not match SHA-512 of the claims the gateway served",
        )
        add(
            "model",
            claims.model == model and model in registry.models,
            f"model {claims.model!r} is in the registry"
            if claims.model == model and model in registry.models
            else (
                f"the worker attests model {claims.model!r}, not {model!r}"
                if claims.model != model
                else f"model {model!r} is not in the signed registry"
            ),
        )
        attributes = int.from_bytes(bytes(report.td_attributes), "little")
        debug = bool(attributes & TD_ATTR_DEBUG)
        add(
            "debug",
            not debug,
            "TD is a debug TD (TD_ATTRIBUTES.DEBUG set)" if debug else "not debug",
        )
        sept = bool(attributes & TD_ATTR_SEPT_VE_DISABLE)
        add("sept_ve_disable", sept, "set" if sept else "SEPT_VE_DISABLE (bit 28) is not set")
        status = check.tcb_status or ""
        add(
            "tcb_status",
            status in registry.tcb_statuses,
            f"TCB status {status}"
            + ("" if status in registry.tcb_statuses else " is not accepted by the registry"),
        )
        unknown = [a for a in check.advisory_ids if a not in registry.advisories]
        add(
            "advisories",
            not unknown,
            "none outside the registry's list" if not unknown else f"not allowed: {unknown}",
        )
        add("measurements", *self._measurements(check, registry))
        add("freshness", *self._freshness(claims, at))
        gpu_needed = model in registry.gpu_cc_models
        add(
            "gpu_cc",
            not gpu_needed,
            "no GPU evidence required"
            if not gpu_needed
            else f"the registry requires GPU evidence for {model!r}; this client does not "
            "verify GPU evidence yet",
        )
        return out

    @staticmethod
    def _measurements(check: WorkerCheck, registry: RegistryView) -> tuple[bool, str]:
        image = check.image_hash or ""
        m = check.measurements
        mid = measurement_id(
            bytes.fromhex(m["mrtd"]), tuple(bytes.fromhex(m[f"rtmr{i}"]) for i in range(4))
        )
        if image in registry.images:
            return True, f"image hash {image} is in the registry"
        if mid in registry.measurement_sets:
            return True, f"MRTD/RTMR set {mid} is in the registry"
        if image in registry.revoked_images:
            return False, (
                f"image hash {image} was revoked by registry version "
                f"{registry.revoked_images[image]}"
            )
        for entry_id in (f"image:{image}", f"measurements:{mid}"):
            if entry_id in registry.forged:
                return False, (
                    f"image hash {image} is allowed only by registry entry {entry_id}, "
                    f"which was refused: {registry.forged[entry_id]}"
                )
        return False, f"image hash {image} and MRTD/RTMR set {mid} are not in the registry"

    def _freshness(self, claims: WorkerClaims, at: int) -> tuple[bool, str]:
        if claims.timestamp is None:
            # A challenge nonce of the attestation service: this client did not issue it and
            # cannot judge it; the quote still binds the keys (docs/sealed-requests.md).
            return True, "nonce freshness (issued by the attestation service, not checked here)"
        age = at - claims.timestamp
        limit = self.config.max_evidence_age_seconds
        if age > limit:
            return False, f"evidence is {age} s old; this client accepts at most {limit} s"
        if age < -MAX_SKEW_SECONDS:
            return False, f"evidence is dated {-age} s in the future"
        return True, f"evidence is {max(0, age)} s old"
