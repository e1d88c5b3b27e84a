"""Synthetic NVIDIA GPU evidence under a local P-384 test CA (shared by the GPU tests).

`make_world(dir)` builds a root → CA → device → attestation-key chain, OCSP responses and RIMs
on disk; `World.evidence(nonce)` signs a report with the real layout (SPDM 1.1 request ‖
MEASUREMENTS response, DMTF blocks, NVIDIA opaque TLVs, raw r ‖ s signature) over any nonce, so
a report can be bound to `gpu_nonce(claims)`; `World.policy()` trusts the test root explicitly.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cocoon.attestation import der
from cocoon.attestation.gpu.certs import NVIDIA_TCB_EXTENSION
from cocoon.attestation.gpu.ocsp import OcspResponses
from cocoon.attestation.gpu.rim import RimFiles
from cocoon.attestation.gpu.verify import GpuEvidence, GpuPolicy
from cocoon.attestation.roots import TrustAnchor

AT = datetime.now(UTC)
DRIVER, VBIOS_RAW, VBIOS = "560.35.03", bytes.fromhex("0042009701000000"), "97.00.42.00.01"
RIM_IDS = ("NV_GPU_DRIVER_GH100_560.35.03", "NV_GPU_VBIOS_1010_0200_882_9700420001")
MEASUREMENTS = {i: os.urandom(48) for i in range(8)}
DRIVER_INDICES, VBIOS_INDICES = (0, 1, 2, 3), (4, 5, 6)  # index 7 is not referenced


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
    extensions: tuple[x509.ExtensionType, ...] = (),
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, signer = (name, key) if issuer is None else (issuer[0].subject, issuer[1])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(AT - timedelta(days=1))
        .not_valid_after(AT + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False), critical=True
        )
    )
    for ext in extensions:
        b = b.add_extension(ext, critical=False)
    return b.sign(signer, hashes.SHA384())


def _fwid_ext(fwid: bytes) -> x509.UnrecognizedExtension:
    body = der.seq(der.integer(1), der.seq(der.oid("2.16.840.1.101.3.4.2.2"), der.octets(fwid)))
    return x509.UnrecognizedExtension(NVIDIA_TCB_EXTENSION, body)


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("<HH", kind, len(value)) + value


def build_report(nonce: bytes, key: ec.EllipticCurvePrivateKey, fwid: bytes) -> bytes:
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
    record = b"".join(
        struct.pack("<BBHBH", i + 1, 1, 51, 0x01, 48) + v for i, v in MEASUREMENTS.items()
    )
    opaque = b"".join(
        [
            _tlv(3, DRIVER.encode() + b"\x00"),
            _tlv(6, VBIOS_RAW),
            _tlv(15, b"882\x00"),
            _tlv(17, b"1010\x00"),
            _tlv(18, b"0200\x00"),
            _tlv(20, fwid),
        ]
    )
    response = (
        bytes([0x11, 0x60, 0, 0, len(MEASUREMENTS)])
        + len(record).to_bytes(3, "little")
        + record
        + os.urandom(32)
        + struct.pack("<H", len(opaque))
        + opaque
    )
    r, s = decode_dss_signature(key.sign(request + response, ec.ECDSA(hashes.SHA384())))
    return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")


def _rim(version: str, indices: tuple[int, ...]) -> bytes:
    rows = "".join(
        f'<Resource type="Measurement" index="{i}" active="True" alternatives="2" size="48"'
        f' ns2:Hash0="{os.urandom(48).hex()}" ns2:Hash1="{MEASUREMENTS[i].hex()}"/>'
        for i in indices
    )
    return (
        '<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd"'
        ' xmlns:ns2="http://www.w3.org/2001/04/xmlenc#sha384">'
        f'<Meta colloquialVersion="{version}"/><Payload>{rows}</Payload></SoftwareIdentity>'
    ).encode()


@dataclass
class World:
    """A root → CA → device → attestation-key chain, an OCSP responder, RIMs on disk."""

    rim_dir: Path
    keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    certs: dict[str, x509.Certificate] = field(default_factory=dict)
    fwid: bytes = b""  # what the attestation-key certificate's TCB extension carries

    def add(self, name: str, issuer: str | None, **kw: object) -> None:
        self.keys[name] = _key()
        parent = None if issuer is None else (self.certs[issuer], self.keys[issuer])
        self.certs[name] = _cert(name, self.keys[name], parent, **kw)  # type: ignore[arg-type]

    @property
    def chain(self) -> list[x509.Certificate]:
        return [self.certs[n] for n in ("leaf", "device", "ca", "root")]

    @property
    def anchor(self) -> TrustAnchor:
        return TrustAnchor("synthetic-gpu-root", self.certs["root"].public_bytes(Encoding.DER))

    def evidence(self, nonce: bytes, report_fwid: bytes | None = None) -> GpuEvidence:
        fwid = report_fwid or self.fwid
        report = build_report(nonce, self.keys["leaf"], fwid)
        return GpuEvidence(report, b"".join(c.public_bytes(Encoding.PEM) for c in self.chain))

    def ocsp(
        self,
        name: str,
        status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
        responder: str | None = None,
        nonce: bytes | None = None,
    ) -> bytes:
        cert, issuer = self.certs[name], self.chain[self.chain.index(self.certs[name]) + 1]
        issuer_name = {"device": "ca", "ca": "root"}[name]
        responder = responder or issuer_name
        revoked = status == ocsp.OCSPCertStatus.REVOKED
        b = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert,
                issuer,
                hashes.SHA384(),
                status,
                AT - timedelta(hours=1),
                AT + timedelta(hours=1),
                AT - timedelta(days=1) if revoked else None,
                x509.ReasonFlags.key_compromise if revoked else None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.certs[responder])
            .certificates([self.certs[responder]])
        )
        if nonce is not None:
            b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
        return b.sign(self.keys[responder], hashes.SHA384()).public_bytes(Encoding.DER)

    def policy(self, **ocsp_kw: object) -> GpuPolicy:
        responses = [self.ocsp("device", **ocsp_kw), self.ocsp("ca")]  # type: ignore[arg-type]
        return GpuPolicy(
            RimFiles.from_dir(self.rim_dir), OcspResponses(responses), (self.anchor,), "synthetic"
        )


def make_world(rim_dir: Path) -> World:
    w = World(rim_dir)
    w.fwid = os.urandom(48)
    w.add("root", None, ca=True)
    w.add("ca", "root", ca=True)
    w.add("device", "ca", ca=True)
    w.add("leaf", "device", ca=False, extensions=(_fwid_ext(w.fwid),))
    signing = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING])
    w.add("responder", "ca", ca=False, extensions=(signing,))
    w.add("no-eku-responder", "ca", ca=False)
    w.add("rogue-root", None, ca=True)
    w.add("rogue-responder", "rogue-root", ca=False, extensions=(signing,))
    (w.rim_dir / f"{RIM_IDS[0]}.xml").write_bytes(_rim(DRIVER, DRIVER_INDICES))
    (w.rim_dir / f"{RIM_IDS[1]}.swidtag").write_bytes(_rim(VBIOS, VBIOS_INDICES))
    return w
