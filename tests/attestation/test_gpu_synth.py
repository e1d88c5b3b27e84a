"""Synthetic GPU evidence under a local P-384 test CA, for what real samples cannot show: a
report bound to our own claims nonce, revoked certificates, rogue OCSP responders, an echoed
OCSP nonce, a FWID mismatch, and the policy's `require_gpu_cc_models` hook.

The synthetic report has the real layout (SPDM 1.1 request ‖ MEASUREMENTS response, DMTF
blocks, NVIDIA opaque TLVs, raw r ‖ s signature); the real-sample tests are in test_gpu_verify.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cocoon.attestation import der
from cocoon.attestation.claims import Claims
from cocoon.attestation.gpu.certs import NVIDIA_TCB_EXTENSION
from cocoon.attestation.gpu.ocsp import OcspResponses, OcspService
from cocoon.attestation.gpu.rim import RimFiles
from cocoon.attestation.gpu.verify import GpuEvidence, GpuPolicy, evaluate_gpu, gpu_nonce
from cocoon.attestation.policy import Policy, PolicyInput, evaluate
from cocoon.attestation.quote import parse_quote
from cocoon.attestation.roots import TrustAnchor
from cocoon.attestation.simtdx import SimTdx

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


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = World(tmp_path_factory.mktemp("gpu-rims"))
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


@pytest.fixture
def claims(make_claims: Callable[..., Claims]) -> Claims:
    return make_claims(nonce=os.urandom(32), model="llama-70b-cc")


def test_evidence_bound_to_claims_verifies_under_its_explicit_root(
    world: World, claims: Claims
) -> None:
    nonce = gpu_nonce(claims)
    v = evaluate_gpu(world.evidence(nonce), nonce, world.policy(responder="responder"), AT)
    assert v.accepted, v.reason
    assert (v.driver_version, v.vbios_version, v.root) == (DRIVER, VBIOS, "synthetic-gpu-root")
    # the same evidence under NVIDIA's pinned root only
    default = GpuPolicy(world.policy().rims, world.policy().ocsp)
    assert evaluate_gpu(world.evidence(nonce), nonce, default, AT).stage == "root"


def test_gpu_nonce_depends_on_every_claim(make_claims: Callable[..., Claims]) -> None:
    a, b = make_claims(nonce=b"n" * 32), make_claims(nonce=b"n" * 32)
    assert len(gpu_nonce(a)) == 32 and gpu_nonce(a) != gpu_nonce(b)  # different worker keys


@pytest.mark.parametrize(
    ("ocsp_kw", "reason"),
    [
        ({"status": ocsp.OCSPCertStatus.REVOKED}, "revoked"),
        ({"status": ocsp.OCSPCertStatus.UNKNOWN}, "UNKNOWN"),
        ({"responder": "rogue-responder"}, "not issued by its CA"),
        ({"responder": "no-eku-responder"}, "lacks the OCSPSigning EKU"),
    ],
)
def test_ocsp_rejections(world: World, ocsp_kw: dict[str, object], reason: str) -> None:
    nonce = os.urandom(32)
    v = evaluate_gpu(world.evidence(nonce), nonce, world.policy(**ocsp_kw), AT)
    assert (v.accepted, v.stage) == (False, "ocsp")
    assert reason in v.reason


def test_tampered_ocsp_signature_fails(world: World) -> None:
    good = world.policy()
    assert isinstance(good.ocsp, OcspResponses)
    blob = good.ocsp.responses[0]
    tampered = bytearray(blob)
    tampered[blob.index(ocsp.load_der_ocsp_response(blob).signature) + 20] ^= 0x01
    bad = GpuPolicy(
        good.rims, OcspResponses([bytes(tampered), good.ocsp.responses[1]]), (world.anchor,)
    )
    nonce = os.urandom(32)
    v = evaluate_gpu(world.evidence(nonce), nonce, bad, AT)
    assert (v.stage, v.accepted) == ("ocsp", False)
    assert "signature" in v.reason


def test_fwid_must_match_the_attestation_certificate(world: World) -> None:
    nonce = os.urandom(32)
    v = evaluate_gpu(world.evidence(nonce, report_fwid=os.urandom(48)), nonce, world.policy(), AT)
    assert (v.accepted, v.stage) == (False, "fwid")


@pytest.fixture
def echoing_responder(world: World) -> Iterator[tuple[str, list[str]]]:
    mode: list[str] = ["echo"]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            req = ocsp.load_der_ocsp_request(self.rfile.read(int(self.headers["Content-Length"])))
            sent = req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
            name = next(
                n for n in ("device", "ca") if world.certs[n].serial_number == req.serial_number
            )
            echoed = sent if mode[0] == "echo" else os.urandom(32)
            body = world.ocsp(name, nonce=echoed)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", mode
    finally:
        server.shutdown()
        server.server_close()


def test_online_ocsp_nonce_is_echoed(
    world: World, echoing_responder: tuple[str, list[str]]
) -> None:
    url, mode = echoing_responder
    policy = GpuPolicy(world.policy().rims, OcspService(url, nonce=True), (world.anchor,))
    nonce = os.urandom(32)
    assert evaluate_gpu(world.evidence(nonce), nonce, policy, AT).accepted
    mode[0] = "other-nonce"
    v = evaluate_gpu(world.evidence(nonce), nonce, policy, AT)
    assert (v.stage, v.accepted) == ("ocsp", False) and "different nonce" in v.reason


def test_policy_requires_gpu_cc_for_listed_models(
    world: World, claims: Claims, sim: SimTdx, now: int
) -> None:
    quote = parse_quote(sim.quote(claims.report_data()))
    policy = sim.development_policy(require_gpu_cc_models=frozenset({claims.model}))
    nonce = gpu_nonce(claims)
    good = evaluate_gpu(world.evidence(nonce), nonce, world.policy(), AT)
    stale = evaluate_gpu(world.evidence(os.urandom(32)), nonce, world.policy(), AT)
    outcomes = {}
    for label, gpu in (("verified", good), ("rejected", stale), ("absent", None)):
        inp = PolicyInput(quote, "UpToDate", (), claims, now, extra={"gpu": gpu})
        outcomes[label] = next(c for c in evaluate(policy, inp) if c.name == "gpu_cc")
    assert outcomes["verified"].ok
    assert not outcomes["rejected"].ok and "nonce" in outcomes["rejected"].detail
    assert not outcomes["absent"].ok and "no GPU evidence" in outcomes["absent"].detail
    # a model that is not listed gets no gpu_cc check at all
    other = sim.development_policy(require_gpu_cc_models=frozenset({"another-model"}))
    inp = PolicyInput(quote, "UpToDate", (), claims, now)
    assert "gpu_cc" not in [c.name for c in evaluate(other, inp)]


def test_require_gpu_cc_models_round_trips_through_policy_json() -> None:
    pol = Policy.from_dict({"require_gpu_cc_models": ["llama-70b-cc"]})
    assert pol.require_gpu_cc_models == {"llama-70b-cc"}
    assert Policy.from_dict(pol.to_dict()).require_gpu_cc_models == {"llama-70b-cc"}
    assert Policy().require_gpu_cc_models == frozenset()
