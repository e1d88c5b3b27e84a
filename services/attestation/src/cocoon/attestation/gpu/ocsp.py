"""Revocation of the GPU device chain by OCSP: online (POST to a configurable responder URL,
NVIDIA's shape: RFC 6960 over HTTP, SHA-384 CertIDs, optional nonce) or offline (DER responses
supplied as files).

Every certificate between the leaf and the root is checked. The leaf is the attestation-key
certificate the GPU firmware mints at boot; NVIDIA's responder has no record of it, and its
issuer (the device certificate) is checked instead. A response counts only if:
  - it is SUCCESSFUL and names exactly this certificate (serial, issuer name and key hashes);
  - it is signed by the issuer itself or by a responder certificate the issuer issued with the
    OCSPSigning EKU, valid at the verification time;
  - the verification time lies within [thisUpdate - skew, nextUpdate];
  - when a nonce was sent, the response echoes it;
  - the status is GOOD.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from cocoon.attestation.gpu.report import GpuEvidenceError

MAX_OCSP_BYTES = 64 * 1024
CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_TIMEOUT = 5.0


class OcspError(GpuEvidenceError):
    """No acceptable OCSP answer, or a certificate that is revoked or unknown."""


class OcspSource(Protocol):
    def fetch(self, cert: x509.Certificate, issuer: x509.Certificate) -> tuple[bytes, bytes | None]:
        """A DER OCSP response for `cert`, and the nonce that was sent (None when none was)."""
        ...


class OcspService:
    """Online: POST an OCSP request to `url` (NVIDIA: https://ocsp.ndis.nvidia.com/)."""

    def __init__(self, url: str, nonce: bool = True, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url, self.nonce, self.timeout = url, nonce, timeout

    def fetch(self, cert: x509.Certificate, issuer: x509.Certificate) -> tuple[bytes, bytes | None]:
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384())
        nonce = os.urandom(32) if self.nonce else None
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        body = builder.build().public_bytes(serialization.Encoding.DER)
        try:
            resp = httpx.post(
                self.url,
                content=body,
                headers={"Content-Type": "application/ocsp-request"},
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            raise OcspError(f"OCSP responder unreachable: {exc}") from None
        if resp.status_code != 200:
            raise OcspError(f"OCSP responder returned HTTP {resp.status_code}")
        return resp.content[: MAX_OCSP_BYTES + 1], nonce


class OcspResponses:
    """Offline: OCSP responses fetched earlier and supplied as DER (or base64 DER) files."""

    def __init__(self, responses: Iterable[bytes]) -> None:
        self.responses = list(responses)

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike[str]]) -> OcspResponses:
        out = []
        for p in paths:
            blob = Path(p).read_bytes()
            if blob[:1] != b"\x30":  # not DER: the base64 form NVIDIA tools save
                try:
                    blob = base64.b64decode(blob, validate=False)
                except (binascii.Error, ValueError) as exc:
                    raise OcspError(f"OCSP file {p} is neither DER nor base64") from exc
            out.append(blob)
        return cls(out)

    def fetch(self, cert: x509.Certificate, issuer: x509.Certificate) -> tuple[bytes, bytes | None]:
        for blob in self.responses:
            try:
                resp = ocsp.load_der_ocsp_response(blob)
                if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
                    continue
                if any(_names(s, cert, issuer) for s in resp.responses):
                    return blob, None
            except ValueError:
                continue
        raise OcspError(f"no OCSP response supplied for {cert.subject.rfc4514_string()}")


@dataclass(frozen=True)
class OcspResult:
    subject: str
    status: str
    this_update: datetime
    next_update: datetime


def check_chain(
    chain: list[x509.Certificate], source: OcspSource, at: datetime
) -> list[OcspResult]:
    """OCSP for chain[1:-1] (everything but the firmware-minted leaf and the root)."""
    return [check_one(chain[i], chain[i + 1], source, at) for i in range(1, len(chain) - 1)]


def check_one(
    cert: x509.Certificate, issuer: x509.Certificate, source: OcspSource, at: datetime
) -> OcspResult:
    blob, nonce = source.fetch(cert, issuer)
    subject = cert.subject.rfc4514_string()
    if len(blob) > MAX_OCSP_BYTES:
        raise OcspError(f"OCSP response for {subject} is over the size cap")
    try:
        resp = ocsp.load_der_ocsp_response(blob)
    except ValueError as exc:
        raise OcspError(f"OCSP response for {subject} is malformed: {exc}") from None
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"OCSP responder said {resp.response_status.name} for {subject}")
    try:
        single = next((s for s in resp.responses if _names(s, cert, issuer)), None)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise OcspError(f"OCSP response for {subject} is malformed: {exc}") from None
    if single is None:
        raise OcspError(f"OCSP response does not name {subject}")
    _verify_signer(resp, issuer, at, subject)
    this, nxt = single.this_update_utc, single.next_update_utc
    if nxt is None or not this - CLOCK_SKEW <= at <= nxt:
        raise OcspError(f"OCSP response for {subject} is not current at {at.isoformat()}")
    if nonce is not None:
        try:
            echoed = resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            raise OcspError(f"OCSP response for {subject} does not echo the nonce") from None
        if echoed != nonce:
            raise OcspError(f"OCSP response for {subject} carries a different nonce")
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason.name if single.revocation_reason else "unspecified"
        raise OcspError(
            f"{subject} is revoked since {single.revocation_time_utc} (reason {reason})"
        )
    if status != ocsp.OCSPCertStatus.GOOD:
        raise OcspError(f"OCSP status for {subject} is {status.name}")
    return OcspResult(subject, status.name, this, nxt)


def _names(
    single: ocsp.OCSPSingleResponse, cert: x509.Certificate, issuer: x509.Certificate
) -> bool:
    algo = single.hash_algorithm
    return (
        single.serial_number == cert.serial_number
        and single.issuer_name_hash == _digest(algo, issuer.subject.public_bytes())
        and single.issuer_key_hash == _digest(algo, _key_bits(issuer))
    )


def _digest(algo: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algo)
    h.update(data)
    return h.finalize()


def _key_bits(cert: x509.Certificate) -> bytes:
    # The subjectPublicKey BIT STRING contents: for EC keys, the X9.62 uncompressed point.
    return cert.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _verify_signer(
    resp: ocsp.OCSPResponse, issuer: x509.Certificate, at: datetime, subject: str
) -> None:
    signer = next((c for c in [issuer, *resp.certificates] if _is_responder(resp, c)), None)
    if signer is None:
        raise OcspError(f"OCSP response for {subject}: responder certificate not included")
    if signer is not issuer:
        try:
            signer.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise OcspError(f"OCSP responder for {subject} is not issued by its CA") from None
        try:
            eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise OcspError(f"OCSP responder for {subject} lacks the OCSPSigning EKU")
        if not signer.not_valid_before_utc <= at <= signer.not_valid_after_utc:
            raise OcspError(f"OCSP responder certificate for {subject} is not valid at {at}")
    key = signer.public_key()
    algo = resp.signature_hash_algorithm
    if not isinstance(key, ec.EllipticCurvePublicKey) or algo is None:
        raise OcspError(f"OCSP response for {subject} is not ECDSA-signed")
    try:
        key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(algo))
    except InvalidSignature:
        raise OcspError(f"OCSP response signature for {subject} does not verify") from None


def _is_responder(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if resp.responder_name is not None:
        return cert.subject == resp.responder_name
    digest = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return digest == resp.responder_key_hash
