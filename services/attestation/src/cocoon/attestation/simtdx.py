"""Simulated TDX: real-format v4/v5 quotes and matching collateral, for machines without TDX.

Everything is genuine DCAP structure, signed with locally generated keys:

    test root CA ─┬─ PCK platform CA ── PCK leaf (SGX extension: PPID, TCB, PCE-ID, FMSPC, …)
                  │                        └─ signs the QE report, whose REPORTDATA binds the
                  │                           attestation key that signs the quote
                  └─ TCB signing cert ── signs TCB info and QE identity
    CRLs: root CA CRL (issued by the root), PCK CRL (issued by the platform CA)

The quotes go through exactly the dcap-qvl path real quotes take; they are accepted only by a
policy that explicitly trusts this test root (`SimTdx.development_policy()`), never by the
production policy. The CA is persisted under `cache_dir()/attestation/simtdx/` so workers and
the attestation service share it in local runs.

    sim = SimTdx.load_or_create()
    quote = sim.quote(claims.report_data())
    verdict = Verifier(sim.development_policy(), BundleSource([sim.collateral()])).verify(
        quote, claims
    )
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from cocoon.attestation import der
from cocoon.attestation.collateral import Collateral
from cocoon.attestation.policy import Policy
from cocoon.attestation.quote import (
    BODY_TYPE_TD15,
    INTEL_QE_VENDOR_ID,
    TD15_BODY_LEN,
    TD_ATTR_DEBUG,
    TD_ATTR_SEPT_VE_DISABLE,
)
from cocoon.attestation.roots import TrustAnchor
from cocoon.core.paths import cache_dir

SIM_FMSPC = bytes.fromhex("cc00cc00cc00")
SIM_PCE_ID = b"\x00\x00"
SIM_CPU_SVN = bytes([3, 3, 2, 2, 2, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0])
SIM_PCE_SVN = 13
# TEE_TCB_SVN: [0] module ISVSVN; [1] module major version (0: no per-module identity needed).
UP_TO_DATE_TEE_TCB_SVN = bytes([5, 0, 3] + [0] * 13)
OUT_OF_DATE_TEE_TCB_SVN = bytes([4, 0, 3] + [0] * 13)
SIM_ADVISORY = "SIMTDX-SA-00001"
QE_MRSIGNER = hashlib.sha256(b"cocoon simtdx quoting enclave signer").digest()
QE_MRENCLAVE = hashlib.sha256(b"cocoon simtdx quoting enclave").digest()
QE_ISV_PROD_ID = 2
QE_ISV_SVN = 4
QE_ATTRIBUTES = bytes([0x11]) + bytes(15)  # INIT | MODE64BIT, not DEBUG
QE_AUTH_DATA = bytes(range(32))
ROOT_NAME = "simtdx-test-root"
ROOT_CN = "Cocoon SimTDX Root CA"
_CERT_START = datetime(2024, 1, 1, tzinfo=UTC)
_CERT_END = datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)
_STATE_FILE = "simtdx.json"


def _reg(label: str) -> bytes:
    return hashlib.sha384(b"cocoon simtdx " + label.encode()).digest()


@dataclass(frozen=True)
class SimMeasurements:
    """What the simulated TD reports; defaults are fixed so the image hash is stable."""

    mr_td: bytes = field(default_factory=lambda: _reg("MRTD"))
    mr_config_id: bytes = bytes(48)
    mr_owner: bytes = bytes(48)
    mr_owner_config: bytes = bytes(48)
    rtmr0: bytes = field(default_factory=lambda: _reg("RTMR0 firmware"))
    rtmr1: bytes = field(default_factory=lambda: _reg("RTMR1 kernel"))
    rtmr2: bytes = field(default_factory=lambda: _reg("RTMR2 initrd+cmdline"))
    rtmr3: bytes = bytes(48)

    def image_hash(self) -> bytes:
        return hashlib.sha256(
            self.mr_td
            + self.mr_config_id
            + self.mr_owner
            + self.mr_owner_config
            + self.rtmr0
            + self.rtmr1
            + self.rtmr2
            + self.rtmr3
            + bytes(64)
        ).digest()


DEFAULT_MEASUREMENTS = SimMeasurements()


def _raw_sig(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_pub(key: ec.EllipticCurvePrivateKey) -> bytes:
    nums = key.public_key().public_numbers()
    return nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cocoon development (TEST ONLY)"),
        ]
    )


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def sgx_extension(ppid: bytes, cpu_svn: bytes, pce_svn: int, fmspc: bytes) -> bytes:
    """The Intel SGX extension of a PCK certificate (platform CA flavour)."""
    tcb = [der.seq(der.oid(f"{der.TCB}.{i + 1}"), der.integer(v)) for i, v in enumerate(cpu_svn)]
    tcb.append(der.seq(der.oid(der.PCESVN), der.integer(pce_svn)))
    tcb.append(der.seq(der.oid(der.CPUSVN), der.octets(cpu_svn)))
    config = der.seq(
        der.seq(der.oid(der.CONFIGURATION + ".1"), der.boolean(False)),  # dynamic platform
        der.seq(der.oid(der.CONFIGURATION + ".2"), der.boolean(False)),  # cached keys
        der.seq(der.oid(der.CONFIGURATION + ".3"), der.boolean(False)),  # SMT enabled
    )
    return der.seq(
        der.seq(der.oid(der.PPID), der.octets(ppid)),
        der.seq(der.oid(der.TCB), der.seq(*tcb)),
        der.seq(der.oid(der.PCEID), der.octets(SIM_PCE_ID)),
        der.seq(der.oid(der.FMSPC), der.octets(fmspc)),
        der.seq(der.oid(der.SGX_TYPE), der.enumerated(1)),  # scalable
        der.seq(der.oid(der.PLATFORM_INSTANCE_ID), der.octets(hashlib.md5(ppid).digest())),
        der.seq(der.oid(der.CONFIGURATION), config),
    )


class _CertFactory:
    def __init__(self, issuer_key: ec.EllipticCurvePrivateKey, issuer_name: x509.Name) -> None:
        self.key = issuer_key
        self.name = issuer_name

    def issue(
        self,
        subject_key: ec.EllipticCurvePrivateKey,
        cn: str,
        *,
        ca_path: int | None,
        extra: list[x509.ExtensionType] = (),  # type: ignore[assignment]
    ) -> x509.Certificate:
        pub = subject_key.public_key()
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.name)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_CERT_START)
            .not_valid_after(_CERT_END)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        is_ca = ca_path is not None
        b = b.add_extension(x509.BasicConstraints(ca=is_ca, path_length=ca_path), critical=True)
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=not is_ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        for ext in extra:
            b = b.add_extension(ext, critical=False)
        return b.sign(self.key, hashes.SHA256())


@dataclass
class SimTdx:
    root_key: ec.EllipticCurvePrivateKey
    root_cert: x509.Certificate
    platform_key: ec.EllipticCurvePrivateKey
    platform_cert: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck_cert: x509.Certificate
    tcb_key: ec.EllipticCurvePrivateKey
    tcb_cert: x509.Certificate
    attestation_key: ec.EllipticCurvePrivateKey
    ppid: bytes

    # ---- construction and persistence ------------------------------------------------------

    @classmethod
    def create(cls) -> SimTdx:
        def key() -> ec.EllipticCurvePrivateKey:
            return ec.generate_private_key(ec.SECP256R1())

        root_key, platform_key, pck_key, tcb_key = key(), key(), key(), key()
        root_name = _name(ROOT_CN)
        root_cert = _CertFactory(root_key, root_name).issue(root_key, ROOT_CN, ca_path=1)
        by_root = _CertFactory(root_key, root_name)
        platform_cert = by_root.issue(platform_key, "Cocoon SimTDX PCK Platform CA", ca_path=0)
        tcb_cert = by_root.issue(tcb_key, "Cocoon SimTDX TCB Signing", ca_path=None)
        ppid = secrets.token_bytes(16)
        ext = x509.UnrecognizedExtension(
            x509.ObjectIdentifier(der.SGX_EXTENSION),
            sgx_extension(ppid, SIM_CPU_SVN, SIM_PCE_SVN, SIM_FMSPC),
        )
        pck_cert = _CertFactory(platform_key, platform_cert.subject).issue(
            pck_key, "Cocoon SimTDX PCK Certificate", ca_path=None, extra=[ext]
        )
        return cls(
            root_key,
            root_cert,
            platform_key,
            platform_cert,
            pck_key,
            pck_cert,
            tcb_key,
            tcb_cert,
            key(),
            ppid,
        )

    @staticmethod
    def default_dir() -> Path:
        return cache_dir() / "attestation" / "simtdx"

    @classmethod
    def load_or_create(cls, directory: str | Path | None = None) -> SimTdx:
        """Load the shared test CA, creating it once (under a file lock) if it is missing."""
        d = Path(directory) if directory is not None else cls.default_dir()
        d.mkdir(parents=True, exist_ok=True)
        path = d / _STATE_FILE
        with open(d / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists():
                return cls._from_state(json.loads(path.read_text()))
            sim = cls.create()
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(sim._state(), fh, indent=1)
            os.replace(tmp, path)
            return sim

    def _state(self) -> dict[str, Any]:
        def k(key: ec.EllipticCurvePrivateKey) -> str:
            return key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()

        return {
            "format": "cocoon.attestation.simtdx/1",
            "warning": "TEST ONLY keys for simulated TDX; never trust this root in production",
            "root_key": k(self.root_key),
            "root_cert": _pem(self.root_cert),
            "platform_key": k(self.platform_key),
            "platform_cert": _pem(self.platform_cert),
            "pck_key": k(self.pck_key),
            "pck_cert": _pem(self.pck_cert),
            "tcb_key": k(self.tcb_key),
            "tcb_cert": _pem(self.tcb_cert),
            "attestation_key": k(self.attestation_key),
            "ppid": self.ppid.hex(),
        }

    @classmethod
    def _from_state(cls, s: dict[str, Any]) -> SimTdx:
        def k(name: str) -> ec.EllipticCurvePrivateKey:
            key = serialization.load_pem_private_key(s[name].encode(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return key

        def c(name: str) -> x509.Certificate:
            return x509.load_pem_x509_certificate(s[name].encode())

        return cls(
            k("root_key"),
            c("root_cert"),
            k("platform_key"),
            c("platform_cert"),
            k("pck_key"),
            c("pck_cert"),
            k("tcb_key"),
            c("tcb_cert"),
            k("attestation_key"),
            bytes.fromhex(s["ppid"]),
        )

    # ---- trust -----------------------------------------------------------------------------

    @property
    def trust_anchor(self) -> TrustAnchor:
        return TrustAnchor(ROOT_NAME, self.root_cert.public_bytes(serialization.Encoding.DER))

    def development_policy(self, **kw: Any) -> Policy:
        """Intel root + this test root, allowing the default simulated image unless overridden."""
        kw.setdefault("allowed_image_hashes", frozenset({DEFAULT_MEASUREMENTS.image_hash().hex()}))
        return Policy.development(self.trust_anchor, **kw)

    # ---- quotes ----------------------------------------------------------------------------

    def quote(
        self,
        report_data: bytes,
        *,
        measurements: SimMeasurements = DEFAULT_MEASUREMENTS,
        debug: bool = False,
        sept_ve_disable: bool = True,
        tee_tcb_svn: bytes = UP_TO_DATE_TEE_TCB_SVN,
        version: int = 4,
        mr_service_td: bytes = bytes(48),
    ) -> bytes:
        """A signed TDX quote (v4 with a TD 1.0 body, or v5 with a TD 1.5 body)."""
        if len(report_data) != 64:
            raise ValueError("REPORTDATA is 64 bytes")
        if version not in (4, 5):
            raise ValueError("simulated quotes are v4 or v5")
        attrs = (TD_ATTR_DEBUG if debug else 0) | (
            TD_ATTR_SEPT_VE_DISABLE if sept_ve_disable else 0
        )
        m = measurements
        body = b"".join(
            [
                tee_tcb_svn,
                _reg("MRSEAM"),
                bytes(48),  # MRSIGNERSEAM: Intel's TDX module (zero)
                bytes(8),  # SEAM_ATTRIBUTES
                attrs.to_bytes(8, "little"),
                bytes.fromhex("e702060000000000"),  # XFAM: x87, SSE, AVX, AVX-512, PK, …
                m.mr_td,
                m.mr_config_id,
                m.mr_owner,
                m.mr_owner_config,
                m.rtmr0,
                m.rtmr1,
                m.rtmr2,
                m.rtmr3,
                report_data,
            ]
        )
        header = (
            struct.pack("<HHIHH", version, 2, 0x81, QE_ISV_SVN, SIM_PCE_SVN)
            + INTEL_QE_VENDOR_ID  # dcap-qvl only accepts Intel's QE vendor id
            + bytes(20)
        )
        if version == 5:
            body = body + tee_tcb_svn + mr_service_td
            header = header + struct.pack("<HI", BODY_TYPE_TD15, TD15_BODY_LEN)
        signed = header + body
        att_pub = _raw_pub(self.attestation_key)
        qe_report = self._qe_report(hashlib.sha256(att_pub + QE_AUTH_DATA).digest() + bytes(32))
        chain = (_pem(self.pck_cert) + _pem(self.platform_cert) + _pem(self.root_cert)).encode()
        cert6 = (
            qe_report
            + _raw_sig(self.pck_key, qe_report)
            + struct.pack("<H", len(QE_AUTH_DATA))
            + QE_AUTH_DATA
            + struct.pack("<HI", 5, len(chain))
            + chain
        )
        sig_data = (
            _raw_sig(self.attestation_key, signed)
            + att_pub
            + struct.pack("<HI", 6, len(cert6))
            + cert6
        )
        return signed + struct.pack("<I", len(sig_data)) + sig_data

    @staticmethod
    def _qe_report(report_data: bytes) -> bytes:
        return b"".join(
            [
                SIM_CPU_SVN,
                struct.pack("<I", 0),  # MISCSELECT
                bytes(28),
                QE_ATTRIBUTES,
                QE_MRENCLAVE,
                bytes(32),
                QE_MRSIGNER,
                bytes(96),
                struct.pack("<HH", QE_ISV_PROD_ID, QE_ISV_SVN),
                bytes(60),
                report_data,
            ]
        )

    # ---- collateral ------------------------------------------------------------------------

    def collateral(
        self,
        at: int | None = None,
        *,
        validity_seconds: int = 30 * 86400,
        revoke_pck: bool = False,
    ) -> Collateral:
        """TCB info, QE identity and CRLs valid from `at - 1h` for `validity_seconds`."""
        issue = int(time.time() if at is None else at) - 3600
        nxt = issue + validity_seconds

        def comps(svns: bytes) -> list[dict[str, int]]:
            return [{"svn": v} for v in svns]

        def level(tee: bytes, status: str, advisories: list[str]) -> dict[str, Any]:
            lv: dict[str, Any] = {
                "tcb": {
                    "sgxtcbcomponents": comps(SIM_CPU_SVN),
                    "pcesvn": SIM_PCE_SVN,
                    "tdxtcbcomponents": comps(tee),
                },
                "tcbDate": "2024-01-01T00:00:00Z",
                "tcbStatus": status,
            }
            if advisories:
                lv["advisoryIDs"] = advisories
            return lv

        tcb_info = {
            "id": "TDX",
            "version": 3,
            "issueDate": _iso(issue),
            "nextUpdate": _iso(nxt),
            "fmspc": SIM_FMSPC.hex(),
            "pceId": SIM_PCE_ID.hex(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tdxModule": {
                "mrsigner": "00" * 48,
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
            },
            "tcbLevels": [
                level(UP_TO_DATE_TEE_TCB_SVN, "UpToDate", []),
                level(OUT_OF_DATE_TEE_TCB_SVN, "OutOfDate", [SIM_ADVISORY]),
            ],
        }
        qe_identity = {
            "id": "TD_QE",
            "version": 2,
            "issueDate": _iso(issue),
            "nextUpdate": _iso(nxt),
            "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": QE_ATTRIBUTES.hex().upper(),
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": QE_MRSIGNER.hex().upper(),
            "isvprodid": QE_ISV_PROD_ID,
            "tcbLevels": [
                {
                    "tcb": {"isvsvn": QE_ISV_SVN},
                    "tcbDate": "2024-01-01T00:00:00Z",
                    "tcbStatus": "UpToDate",
                }
            ],
        }
        tcb_text = json.dumps(tcb_info, separators=(",", ":"))
        qe_text = json.dumps(qe_identity, separators=(",", ":"))
        revoked = [self.pck_cert.serial_number] if revoke_pck else []
        tcb_chain = _pem(self.tcb_cert) + _pem(self.root_cert)
        doc = {
            "pck_crl_issuer_chain": _pem(self.platform_cert) + _pem(self.root_cert),
            "root_ca_crl": self._crl(self.root_key, self.root_cert, issue, nxt, []).hex(),
            "pck_crl": self._crl(self.platform_key, self.platform_cert, issue, nxt, revoked).hex(),
            "tcb_info_issuer_chain": tcb_chain,
            "tcb_info": tcb_text,
            "tcb_info_signature": _raw_sig(self.tcb_key, tcb_text.encode()).hex(),
            "qe_identity_issuer_chain": tcb_chain,
            "qe_identity": qe_text,
            "qe_identity_signature": _raw_sig(self.tcb_key, qe_text.encode()).hex(),
        }
        return Collateral.from_doc(doc)

    @staticmethod
    def _crl(
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Certificate,
        this_update: int,
        next_update: int,
        revoked_serials: list[int],
    ) -> bytes:
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(datetime.fromtimestamp(this_update, UTC))
            .next_update(datetime.fromtimestamp(next_update, UTC))
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                critical=False,
            )
        )
        for serial in revoked_serials:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(datetime.fromtimestamp(this_update, UTC) - timedelta(seconds=1))
                .build()
            )
        return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


_devices_lock = threading.Lock()
_devices: dict[Path, SimTdx] = {}


def quote_device(report_data: bytes) -> bytes:
    """The `simulated` quote device of `cocoon.core.tee` (entry point group `cocoon.tee`).

    Loaded once per process and CA directory: opening the shared test CA takes a file lock and
    key parsing. Keyed by directory so a process that changes COCOON_CACHE_DIR (tests, several
    local networks) never signs with another network's test CA.
    """
    directory = SimTdx.default_dir().resolve()
    with _devices_lock:
        if directory not in _devices:
            _devices[directory] = SimTdx.load_or_create(directory)
        sim = _devices[directory]
    return sim.quote(report_data)
