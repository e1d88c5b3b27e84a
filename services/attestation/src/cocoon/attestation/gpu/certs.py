"""The GPU device certificate chain: loading, verification to a pinned NVIDIA root, the report
signature and the FWID the leaf certificate carries.

The chain is leaf first: the per-boot attestation-key certificate (GSP FMC), the device's
identity certificate (GSP BROM), NVIDIA's provisioning and product CAs, and the NVIDIA Device
Identity CA. Every link is ECDSA P-384 with SHA-384.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from cocoon.attestation import der
from cocoon.attestation.gpu.report import SIGNATURE_LEN, GpuEvidenceError, GpuReport
from cocoon.attestation.roots import TrustAnchor

MAX_CHAIN_CERTS = 8
MAX_CHAIN_BYTES = 32 * 1024
# NVIDIA's DICE-style extension on the attestation-key certificate; it carries the FWID.
NVIDIA_TCB_EXTENSION = x509.ObjectIdentifier("2.23.133.5.4.1")
_SHA384_OID = "2.16.840.1.101.3.4.2.2"

NVIDIA_DEVICE_ROOT_SHA256 = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
# NVIDIA Device Identity CA (public certificate, shipped with NVIDIA's verifiers and at the end
# of every Hopper device chain).
NVIDIA_DEVICE_ROOT_PEM = b"""-----BEGIN CERTIFICATE-----
MIICCzCCAZCgAwIBAgIQLTZwscoQBBHB/sDoKgZbVDAKBggqhkjOPQQDAzA1MSIw
IAYDVQQDDBlOVklESUEgRGV2aWNlIElkZW50aXR5IENBMQ8wDQYDVQQKDAZOVklE
SUEwIBcNMjExMTA1MDAwMDAwWhgPOTk5OTEyMzEyMzU5NTlaMDUxIjAgBgNVBAMM
GU5WSURJQSBEZXZpY2UgSWRlbnRpdHkgQ0ExDzANBgNVBAoMBk5WSURJQTB2MBAG
ByqGSM49AgEGBSuBBAAiA2IABA5MFKM7+KViZljbQSlgfky/RRnEQScW9NDZF8SX
gAW96r6u/Ve8ZggtcYpPi2BS4VFu6KfEIrhN6FcHG7WP05W+oM+hxj7nyA1r1jkB
2Ry70YfThX3Ba1zOryOP+MJ9vaNjMGEwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8B
Af8EBAMCAQYwHQYDVR0OBBYEFFeF/4PyY8xlfWi3Olv0jUrL+0lfMB8GA1UdIwQY
MBaAFFeF/4PyY8xlfWi3Olv0jUrL+0lfMAoGCCqGSM49BAMDA2kAMGYCMQCPeFM3
TASsKQVaT+8S0sO9u97PVGCpE9d/I42IT7k3UUOLSR/qvJynVOD1vQKVXf0CMQC+
EY55WYoDBvs2wPAH1Gw4LbcwUN8QCff8bFmV4ZxjCRr4WXTLFHBKjbfneGSBWwA=
-----END CERTIFICATE-----"""
NVIDIA_DEVICE_ROOT = TrustAnchor.from_pem(
    "nvidia-device-identity-ca", NVIDIA_DEVICE_ROOT_PEM, NVIDIA_DEVICE_ROOT_SHA256
)


# What `cryptography` raises on a certificate that loads (lazily) but is malformed inside; the
# fuzz tests found each of these. GpuEvidenceError and der.DerError are ValueErrors.
MALFORMED: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


class ChainError(GpuEvidenceError):
    """A certificate chain that does not verify."""


def load_chain(blob: bytes) -> list[x509.Certificate]:
    """Leaf-first certificates from concatenated PEM or concatenated DER (as the driver gives)."""
    if not blob:
        raise GpuEvidenceError("empty certificate chain")
    if len(blob) > MAX_CHAIN_BYTES:
        raise GpuEvidenceError(f"certificate chain over the {MAX_CHAIN_BYTES}-byte cap")
    try:
        if blob.lstrip().startswith(b"-----BEGIN"):
            certs = x509.load_pem_x509_certificates(blob)
        else:
            certs, pos = [], 0
            while pos < len(blob):
                start = pos
                _, _, pos = der.read_tlv(blob, pos)
                certs.append(x509.load_der_x509_certificate(blob[start:pos]))
    except MALFORMED as exc:
        raise GpuEvidenceError(f"unreadable certificate chain: {exc}") from None
    if not 2 <= len(certs) <= MAX_CHAIN_CERTS:
        raise GpuEvidenceError(f"chain has {len(certs)} certificates (want 2..{MAX_CHAIN_CERTS})")
    return certs


def anchor_for(chain: list[x509.Certificate], roots: tuple[TrustAnchor, ...]) -> TrustAnchor:
    """The pinned root the chain ends at, matched on the SHA-256 of its DER."""
    top = chain[-1].public_bytes(Encoding.DER)
    for anchor in roots:
        if anchor.der == top:
            return anchor
    raise ChainError(f"chain ends at {chain[-1].subject.rfc4514_string()!r}, not a pinned root")


def verify_chain(chain: list[x509.Certificate], at: datetime) -> None:
    """Each certificate is issued and signed (ECDSA P-384) by the next and valid at `at`."""
    for depth, cert in enumerate(chain):
        name = cert.subject.rfc4514_string()
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise ChainError(f"certificate {depth} ({name}) is not valid at {at.isoformat()}")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
            raise ChainError(f"certificate {depth} ({name}) does not hold a P-384 key")
        issuer = chain[min(depth + 1, len(chain) - 1)]  # the root signs itself
        if depth > 0 and not _is_ca(cert, depth - 1):
            raise ChainError(f"certificate {depth} ({name}) may not issue certificates")
        if not isinstance(cert.signature_hash_algorithm, hashes.SHA384):
            raise ChainError(f"certificate {depth} ({name}) is not signed with SHA-384")
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ChainError(
                f"certificate {depth} ({name}) is not signed by its issuer: "
                f"{exc or 'bad signature'}"
            ) from None


def _is_ca(cert: x509.Certificate, below: int) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    path_ok = bc.path_length is None or bc.path_length >= below
    return bc.ca and ku.key_cert_sign and path_ok


def verify_report_signature(report: GpuReport, leaf: x509.Certificate) -> None:
    """ECDSA P-384 / SHA-384 over request ‖ response-without-signature, by the leaf's key."""
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise ChainError("the attestation certificate does not hold a P-384 key")
    half = SIGNATURE_LEN // 2
    r = int.from_bytes(report.signature[:half], "big")
    s = int.from_bytes(report.signature[half:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise ChainError("report signature does not verify with the attestation key") from None


def leaf_fwids(leaf: x509.Certificate) -> list[bytes]:
    """SHA-384 FWIDs in the leaf's NVIDIA TCB extension (empty when it has none)."""
    try:
        value = leaf.extensions.get_extension_for_oid(NVIDIA_TCB_EXTENSION).value
    except x509.ExtensionNotFound:
        return []
    blob = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    out: list[bytes] = []
    try:
        _walk(blob, out, depth=0)
    except der.DerError as exc:
        raise ChainError(f"malformed TCB extension: {exc}") from None
    return out


def _walk(blob: bytes, out: list[bytes], depth: int) -> None:
    # Collect every SEQUENCE { OID sha384, OCTET STRING digest } wherever it nests.
    if depth > 8:
        return
    for tag, value in der.children(blob):
        if tag not in (der.SEQUENCE, 0xA6, 0xA0):
            continue
        parts = der.children(value)
        if (
            len(parts) == 2
            and parts[0][0] == der.OID
            and der.decode_oid(parts[0][1]) == _SHA384_OID
            and parts[1][0] == der.OCTET_STRING
        ):
            out.append(parts[1][1])
        else:
            _walk(value, out, depth + 1)


def now() -> datetime:
    return datetime.now(UTC)
