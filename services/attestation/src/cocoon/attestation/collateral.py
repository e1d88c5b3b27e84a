"""DCAP collateral: TCB info, QE identity, CRLs and their issuer chains.

One `Collateral` covers one FMSPC. Its validity window is the intersection of the TCB info and
QE identity [issueDate, nextUpdate] and both CRLs' [thisUpdate, nextUpdate]; verification at a
time outside it fails. Sources:

* `BundleSource`: an offline JSON file, either one collateral object in dcap-qvl's
  `QuoteCollateralV3` JSON shape, or `{"format": BUNDLE_FORMAT, "collateral": [objects...]}`.
* `PcsSource`: a PCCS or Intel PCS base URL speaking the PCS API v4; results are cached in
  memory until the collateral's earliest nextUpdate.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import dcap_qvl
import httpx
from cryptography import x509

from cocoon.attestation.quote import Quote

BUNDLE_FORMAT = "cocoon.attestation.collateral-bundle/1"
_FIELDS = (
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


class CollateralError(ValueError):
    """Collateral that is missing, malformed or cannot be fetched."""


def _rfc3339(value: Any, what: str) -> int:
    try:
        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise CollateralError(f"{what} is not an RFC 3339 time: {value!r}") from None


def _crl_window(der: bytes, what: str) -> tuple[int, int]:
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise CollateralError(f"{what} is not a DER CRL: {exc}") from None
    if crl.next_update_utc is None:
        raise CollateralError(f"{what} has no nextUpdate")
    return int(crl.last_update_utc.timestamp()), int(crl.next_update_utc.timestamp())


@dataclass(frozen=True)
class Collateral:
    doc: dict[str, str]  # dcap-qvl JSON shape: PEM chains, hex CRLs/signatures, raw JSON strings
    fmspc: str  # lower-case hex
    not_before: int
    not_after: int
    dcap: Any = field(repr=False, compare=False)  # parsed dcap_qvl.QuoteCollateralV3, reused

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Collateral:
        missing = [k for k in _FIELDS if not isinstance(doc.get(k), str)]
        if missing:
            raise CollateralError(f"collateral lacks string fields {missing}")
        clean = {k: doc[k] for k in _FIELDS}
        try:
            tcb = json.loads(clean["tcb_info"])
            qe = json.loads(clean["qe_identity"])
            root_crl = bytes.fromhex(clean["root_ca_crl"])
            pck_crl = bytes.fromhex(clean["pck_crl"])
        except ValueError as exc:
            raise CollateralError(f"collateral is malformed: {exc}") from None
        if not isinstance(tcb, dict) or not isinstance(qe, dict):
            raise CollateralError("tcb_info and qe_identity must be JSON objects")
        if tcb.get("id") != "TDX":
            raise CollateralError(f"TCB info is for {tcb.get('id')!r}, not TDX")
        starts = [_rfc3339(tcb.get("issueDate"), "tcbInfo.issueDate")]
        ends = [_rfc3339(tcb.get("nextUpdate"), "tcbInfo.nextUpdate")]
        starts.append(_rfc3339(qe.get("issueDate"), "qeIdentity.issueDate"))
        ends.append(_rfc3339(qe.get("nextUpdate"), "qeIdentity.nextUpdate"))
        for der, what in ((root_crl, "root CA CRL"), (pck_crl, "PCK CRL")):
            s, e = _crl_window(der, what)
            starts.append(s)
            ends.append(e)
        try:
            parsed = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(clean))
        except ValueError as exc:
            raise CollateralError(f"dcap-qvl refuses the collateral: {exc}") from None
        return cls(
            doc=clean,
            fmspc=str(tcb.get("fmspc", "")).lower(),
            not_before=max(starts),
            not_after=min(ends),
            dcap=parsed,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Collateral:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise CollateralError(f"collateral is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise CollateralError("collateral must be a JSON object")
        return cls.from_doc(doc)

    def to_json(self) -> str:
        return json.dumps(self.doc, indent=2)

    def covers(self, at: int) -> bool:
        return self.not_before <= at <= self.not_after


class CollateralSource(Protocol):
    def get(self, quote: Quote, at: int) -> Collateral: ...


def load_bundle(path: str | Path) -> list[Collateral]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CollateralError(f"cannot read collateral bundle {path}: {exc}") from None
    if isinstance(doc, dict) and doc.get("format") == BUNDLE_FORMAT:
        items = doc.get("collateral")
        if not isinstance(items, list):
            raise CollateralError("bundle 'collateral' must be a list")
        return [Collateral.from_doc(item) for item in items]
    if isinstance(doc, dict):
        return [Collateral.from_doc(doc)]
    raise CollateralError("collateral file must hold a JSON object")


def save_bundle(path: str | Path, items: list[Collateral]) -> None:
    body = {"format": BUNDLE_FORMAT, "collateral": [c.doc for c in items]}
    Path(path).write_text(json.dumps(body, indent=2) + "\n")


class BundleSource:
    """Offline collateral, chosen by the quote's FMSPC."""

    def __init__(self, items: list[Collateral]) -> None:
        self.items = list(items)

    @classmethod
    def from_file(cls, path: str | Path) -> BundleSource:
        return cls(load_bundle(path))

    def get(self, quote: Quote, at: int) -> Collateral:
        fmspc = quote.pck.fmspc.hex()
        matches = [c for c in self.items if c.fmspc == fmspc]
        if not matches:
            raise CollateralError(f"no collateral for FMSPC {fmspc} in the bundle")
        covering = [c for c in matches if c.covers(at)]
        # Outside every window: hand back the latest so verification reports the expiry.
        return max(covering or matches, key=lambda c: c.not_after)


def _members(text: str) -> dict[str, str]:
    """Top-level members of a JSON object as exact source substrings (signatures cover them)."""
    dec = json.JSONDecoder()
    out: dict[str, str] = {}
    i = text.index("{") + 1
    n = len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip(i)
    if i < n and text[i] == "}":
        return out
    while True:
        key, i = dec.raw_decode(text, skip(i))
        i = skip(i)
        if text[i] != ":":
            raise ValueError("expected ':'")
        start = skip(i + 1)
        _, end = dec.raw_decode(text, start)
        out[key] = text[start:end]
        i = skip(end)
        if text[i] == "}":
            return out
        if text[i] != ",":
            raise ValueError("expected ','")
        i += 1


def split_signed(body: str, key: str) -> tuple[str, bytes]:
    """(`key` member verbatim, signature bytes) from a PCS `{key: {...}, "signature": hex}` body."""
    try:
        members = _members(body)
        return members[key], bytes.fromhex(json.loads(members["signature"]))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise CollateralError(f"PCS response is not a signed {key!r} document: {exc!r}") from None


def _crl_bytes(body: bytes) -> bytes:
    # PCS serves DER; PCCS serves the same DER hex-encoded.
    text = body.strip()
    if text and all(c in b"0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text.decode())
    return body


class PcsSource:
    """Collateral from a PCCS / Intel PCS (API v4), cached until its earliest nextUpdate."""

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.Client | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        root_crl_url: str | None = None,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.client = client or httpx.Client(timeout=timeout, follow_redirects=True)
        self.clock = clock
        self.root_crl_url = root_crl_url
        self.fetches = 0  # number of network fetches, for tests and metrics
        self._cache: dict[tuple[str, str], Collateral] = {}
        self._lock = threading.Lock()

    def get(self, quote: Quote, at: int) -> Collateral:
        key = (quote.pck.fmspc.hex(), quote.pck.ca)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and self.clock() <= cached.not_after:
                return cached
        fresh = self.fetch(*key)
        with self._lock:
            self._cache[key] = fresh
        return fresh

    def _get(self, url: str) -> httpx.Response:
        try:
            resp = self.client.get(url)
        except httpx.HTTPError as exc:
            raise CollateralError(f"GET {url} failed: {exc}") from None
        if resp.status_code != 200:
            raise CollateralError(f"GET {url} returned HTTP {resp.status_code}")
        return resp

    @staticmethod
    def _chain(resp: httpx.Response, *names: str) -> str:
        for name in names:
            if name in resp.headers:
                return unquote(resp.headers[name])
        raise CollateralError(f"PCS response lacks the {names[0]} header")

    def fetch(self, fmspc: str, ca: str) -> Collateral:
        self.fetches += 1
        v4 = f"{self.base}/{{}}/certification/v4/{{}}"
        crl = self._get(v4.format("sgx", f"pckcrl?ca={ca}&encoding=der"))
        tcb = self._get(v4.format("tdx", f"tcb?fmspc={fmspc}"))
        qe = self._get(v4.format("tdx", "qe/identity"))
        tcb_chain = self._chain(tcb, "TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
        qe_chain = self._chain(qe, "SGX-Enclave-Identity-Issuer-Chain")
        tcb_info, tcb_sig = split_signed(tcb.text, "tcbInfo")
        qe_identity, qe_sig = split_signed(qe.text, "enclaveIdentity")
        doc = {
            "pck_crl_issuer_chain": self._chain(crl, "SGX-PCK-CRL-Issuer-Chain"),
            "root_ca_crl": self._root_crl(qe_chain).hex(),
            "pck_crl": _crl_bytes(crl.content).hex(),
            "tcb_info_issuer_chain": tcb_chain,
            "tcb_info": tcb_info,
            "tcb_info_signature": tcb_sig.hex(),
            "qe_identity_issuer_chain": qe_chain,
            "qe_identity": qe_identity,
            "qe_identity_signature": qe_sig.hex(),
        }
        return Collateral.from_doc(doc)

    def _root_crl(self, issuer_chain: str) -> bytes:
        if self.root_crl_url:
            return _crl_bytes(self._get(self.root_crl_url).content)
        # PCCS serves it directly; Intel's PCS does not, so fall back to the root's CRL DP.
        try:
            return _crl_bytes(self._get(f"{self.base}/sgx/certification/v4/rootcacrl").content)
        except CollateralError:
            pass
        try:
            root = x509.load_pem_x509_certificates(issuer_chain.encode())[-1]
            dps = root.extensions.get_extension_for_class(x509.CRLDistributionPoints)
            url = dps.value[0].full_name[0].value
        except (ValueError, IndexError, x509.ExtensionNotFound) as exc:
            raise CollateralError(f"no root CA CRL location: {exc}") from None
        return _crl_bytes(self._get(url).content)
