"""Intel TDX DCAP quote parsing (quote versions 4 and 5, TD report 1.0 and 1.5 bodies).

Layouts follow Intel's "TDX DCAP Quoting Library API" (quote format appendix). Everything the
policy needs is parsed here rather than taken from the verifier library so that each field is
available even when verification fails, and so that malformed input is refused with one clear
exception type before any cryptography runs.

Size cap: `MAX_QUOTE_BYTES` (32 KiB, COCOON's RA-TLS limit too). Real quotes are ~5 KB.
Trailing bytes: zero padding after the declared signature data is tolerated (quote-generation
interfaces hand out fixed-size buffers, COCOON's sample has 70 such bytes) and dropped from
`Quote.raw`; any non-zero trailing byte is an error.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from cocoon.attestation import der

MAX_QUOTE_BYTES = 32 * 1024

HEADER_LEN = 48
TD10_BODY_LEN = 584
TD15_BODY_LEN = 648
ENCLAVE_REPORT_LEN = 384
TEE_TYPE_TDX = 0x81
TEE_TYPE_SGX = 0x00
ATT_KEY_ECDSA_P256 = 2
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

TD_ATTR_DEBUG = 1 << 0
TD_ATTR_SEPT_VE_DISABLE = 1 << 28

_BODY_FIELDS_TD10: tuple[tuple[str, int], ...] = (
    ("tee_tcb_svn", 16),
    ("mr_seam", 48),
    ("mr_signer_seam", 48),
    ("seam_attributes", 8),
    ("td_attributes", 8),
    ("xfam", 8),
    ("mr_td", 48),
    ("mr_config_id", 48),
    ("mr_owner", 48),
    ("mr_owner_config", 48),
    ("rtmr0", 48),
    ("rtmr1", 48),
    ("rtmr2", 48),
    ("rtmr3", 48),
    ("report_data", 64),
)
_BODY_FIELDS_TD15 = (*_BODY_FIELDS_TD10, ("tee_tcb_svn2", 16), ("mr_service_td", 48))


class QuoteFormatError(ValueError):
    """The input is not a well-formed TDX quote this verifier supports."""


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdReport:
    """A TD report body (1.0, or 1.5 with `tee_tcb_svn2` and `mr_service_td`)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_service_td: bytes | None = None

    @property
    def td_attributes_value(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes_value & TD_ATTR_DEBUG)

    @property
    def sept_ve_disable(self) -> bool:
        return bool(self.td_attributes_value & TD_ATTR_SEPT_VE_DISABLE)

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    def image_hash(self) -> bytes:
        """COCOON's image hash: SHA-256(MRTD‖MRCONFIGID‖MROWNER‖MROWNERCONFIG‖RTMR0..3‖0^64)."""
        return hashlib.sha256(
            self.mr_td
            + self.mr_config_id
            + self.mr_owner
            + self.mr_owner_config
            + b"".join(self.rtmrs)
            + bytes(64)
        ).digest()


@dataclass(frozen=True)
class QeReport:
    """The SGX enclave report of the Quoting Enclave (signed by the PCK key)."""

    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes


@dataclass(frozen=True)
class PckInfo:
    """Values from the Intel SGX extension of the PCK leaf certificate."""

    fmspc: bytes
    pce_id: bytes
    ppid: bytes
    cpu_svn: bytes
    pce_svn: int
    tcb_components: tuple[int, ...]
    sgx_type: int
    ca: str  # "platform" or "processor": which PCK CA issued the leaf (selects the PCK CRL)


@dataclass(frozen=True)
class Quote:
    raw: bytes  # the quote without trailing padding; this is what gets verified and hashed
    header: QuoteHeader
    body_type: int  # BODY_TYPE_TD10 or BODY_TYPE_TD15 (v4 quotes are always TD 1.0)
    report: TdReport
    signature: bytes  # ECDSA P-256 r‖s over header (+ v5 body descriptor) + body
    attestation_key: bytes  # P-256 x‖y
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    pck_chain: tuple[x509.Certificate, ...]  # leaf first
    pck: PckInfo
    padding: int  # zero bytes dropped after the signature data

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def td_report_version(self) -> str:
        return "1.5" if self.body_type == BODY_TYPE_TD15 else "1.0"

    @property
    def digest(self) -> bytes:
        """SHA-256 of the canonical quote bytes (a stable id for caches and replay checks)."""
        return hashlib.sha256(self.raw).digest()

    def image_hash(self) -> bytes:
        return self.report.image_hash()

    def measurements(self) -> dict[str, str]:
        r = self.report
        out = {
            "mrtd": r.mr_td.hex(),
            "mrconfigid": r.mr_config_id.hex(),
            "mrowner": r.mr_owner.hex(),
            "mrownerconfig": r.mr_owner_config.hex(),
            "rtmr0": r.rtmr0.hex(),
            "rtmr1": r.rtmr1.hex(),
            "rtmr2": r.rtmr2.hex(),
            "rtmr3": r.rtmr3.hex(),
        }
        if r.mr_service_td is not None:
            out["mrservicetd"] = r.mr_service_td.hex()
        return out

    def to_dict(self) -> dict:
        """Every header and body field, hex-encoded; the `cocoon attest parse --json` shape."""
        h = self.header
        r = self.report
        body = {name: getattr(r, name).hex() for name, _ in _BODY_FIELDS_TD10}
        if r.tee_tcb_svn2 is not None:
            body["tee_tcb_svn2"] = r.tee_tcb_svn2.hex()
        if r.mr_service_td is not None:
            body["mr_service_td"] = r.mr_service_td.hex()
        body["td_attributes_debug"] = r.debug
        body["td_attributes_sept_ve_disable"] = r.sept_ve_disable
        return {
            "size": len(self.raw),
            "padding": self.padding,
            "sha256": self.digest.hex(),
            "header": {
                "version": h.version,
                "att_key_type": h.att_key_type,
                "tee_type": h.tee_type,
                "qe_svn": h.qe_svn,
                "pce_svn": h.pce_svn,
                "qe_vendor_id": h.qe_vendor_id.hex(),
                "user_data": h.user_data.hex(),
            },
            "td_report_version": self.td_report_version,
            "body": body,
            "image_hash": self.image_hash().hex(),
            "pck": {
                "fmspc": self.pck.fmspc.hex(),
                "ca": self.pck.ca,
                "pce_id": self.pck.pce_id.hex(),
                "pce_svn": self.pck.pce_svn,
                "cpu_svn": self.pck.cpu_svn.hex(),
                "sgx_type": self.pck.sgx_type,
                "chain_subjects": [c.subject.rfc4514_string() for c in self.pck_chain],
            },
            "qe_report": {
                "mr_enclave": self.qe_report.mr_enclave.hex(),
                "mr_signer": self.qe_report.mr_signer.hex(),
                "isv_prod_id": self.qe_report.isv_prod_id,
                "isv_svn": self.qe_report.isv_svn,
            },
        }


class _Reader:
    """Bounds-checked cursor: every short read becomes a QuoteFormatError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise QuoteFormatError(
                f"truncated {self.what}: {field} needs {n} bytes at offset {self.pos}, "
                f"{len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, field: str) -> int:
        return struct.unpack("<H", self.take(2, field))[0]

    def u32(self, field: str) -> int:
        return struct.unpack("<I", self.take(4, field))[0]

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


def decode_quote_input(data: bytes) -> bytes:
    """Raw quote bytes from a file's contents: raw binary, or hex text (optional 0x, spaces)."""
    if len(data) > 2 * MAX_QUOTE_BYTES + 64:
        raise QuoteFormatError(f"input of {len(data)} bytes exceeds the {MAX_QUOTE_BYTES}-byte cap")
    text = data.strip()
    if text[:2] in (b"0x", b"0X"):
        text = text[2:]
    compact = b"".join(text.split())
    # Binary quotes start with 04 00 / 05 00, which are not hex digits, so this is unambiguous.
    if compact and all(c in b"0123456789abcdefABCDEF" for c in compact):
        if len(compact) % 2:
            raise QuoteFormatError("hex quote has an odd number of digits")
        return bytes.fromhex(compact.decode())
    return data


def load_quote_file(path: str | Path) -> Quote:
    return parse_quote(decode_quote_input(Path(path).read_bytes()))


def parse_quote(data: bytes) -> Quote:
    """Parse a TDX quote; raises QuoteFormatError on anything malformed or unsupported."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise QuoteFormatError("quote must be bytes")
    data = bytes(data)
    if len(data) > MAX_QUOTE_BYTES:
        raise QuoteFormatError(f"quote of {len(data)} bytes exceeds the {MAX_QUOTE_BYTES}-byte cap")
    rd = _Reader(data, "quote")
    header = _parse_header(rd)

    body_type = BODY_TYPE_TD10
    body_len = TD10_BODY_LEN
    if header.version == 5:
        body_type = rd.u16("body type")
        body_size = rd.u32("body size")
        expected = {BODY_TYPE_TD10: TD10_BODY_LEN, BODY_TYPE_TD15: TD15_BODY_LEN}.get(body_type)
        if expected is None:
            kind = "an SGX enclave report" if body_type == 1 else f"type {body_type}"
            raise QuoteFormatError(f"unsupported v5 body: {kind} (supported: TD report 1.0, 1.5)")
        if body_size != expected:
            raise QuoteFormatError(
                f"v5 body size {body_size} != {expected} for body type {body_type}"
            )
        body_len = expected
    report = _parse_td_report(rd.take(body_len, "TD report body"), body_type)
    signed_end = rd.pos

    sig_len = rd.u32("signature data length")
    sig_data = rd.take(sig_len, "signature data")
    trailing = rd.rest()
    if trailing.strip(b"\x00"):
        raise QuoteFormatError(f"{len(trailing)} unexpected trailing bytes after the quote")

    sig = _Reader(sig_data, "signature data")
    signature = sig.take(64, "quote signature")
    attestation_key = sig.take(64, "attestation key")
    cert_type = sig.u16("certification data type")
    cert_size = sig.u32("certification data size")
    cert_data = sig.take(cert_size, "certification data")
    if sig.pos != len(sig_data):
        raise QuoteFormatError(f"{len(sig_data) - sig.pos} stray bytes inside the signature data")
    if cert_type != CERT_TYPE_QE_REPORT:
        raise QuoteFormatError(
            f"certification data type {cert_type} is not supported (TDX quotes carry type 6)"
        )
    qe_report, qe_sig, qe_auth, chain_pem = _parse_qe_cert_data(cert_data)
    chain = _load_chain(chain_pem)
    pck = _pck_info(chain[0])
    return Quote(
        raw=data[: signed_end + 4 + sig_len],
        header=header,
        body_type=body_type,
        report=report,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_sig,
        qe_auth_data=qe_auth,
        pck_chain_pem=chain_pem,
        pck_chain=chain,
        pck=pck,
        padding=len(trailing),
    )


def signed_region(quote: Quote) -> bytes:
    """The bytes covered by the quote signature: header, v5 body descriptor, body."""
    body_len = TD15_BODY_LEN if quote.body_type == BODY_TYPE_TD15 else TD10_BODY_LEN
    extra = 6 if quote.version == 5 else 0
    return quote.raw[: HEADER_LEN + extra + body_len]


def _parse_header(rd: _Reader) -> QuoteHeader:
    if len(rd.data) < HEADER_LEN:
        raise QuoteFormatError(f"truncated quote: {len(rd.data)} bytes, a header alone is 48")
    version = rd.u16("version")
    att_key_type = rd.u16("attestation key type")
    tee_type = rd.u32("TEE type")
    qe_svn = rd.u16("QE SVN")
    pce_svn = rd.u16("PCE SVN")
    vendor = rd.take(16, "QE vendor id")
    user_data = rd.take(20, "user data")
    # The TEE type first: an SGX quote (v3 or v4) is named as such, not as a bad version.
    if tee_type != TEE_TYPE_TDX:
        name = "SGX" if tee_type == TEE_TYPE_SGX else "unknown"
        raise QuoteFormatError(f"wrong TEE type {tee_type:#x} ({name}); expected TDX (0x81)")
    if version not in (4, 5):
        raise QuoteFormatError(f"unsupported quote version {version} (supported: 4, 5)")
    if att_key_type != ATT_KEY_ECDSA_P256:
        raise QuoteFormatError(
            f"unsupported attestation key type {att_key_type} (supported: 2, ECDSA P-256)"
        )
    return QuoteHeader(version, att_key_type, tee_type, qe_svn, pce_svn, vendor, user_data)


def _parse_td_report(body: bytes, body_type: int) -> TdReport:
    fields = _BODY_FIELDS_TD15 if body_type == BODY_TYPE_TD15 else _BODY_FIELDS_TD10
    rd = _Reader(body, "TD report")
    return TdReport(**{name: rd.take(size, name) for name, size in fields})


def parse_enclave_report(blob: bytes) -> QeReport:
    if len(blob) != ENCLAVE_REPORT_LEN:
        raise QuoteFormatError(f"QE report is {len(blob)} bytes, expected 384")
    rd = _Reader(blob, "QE report")
    cpu_svn = rd.take(16, "cpu_svn")
    misc_select = rd.u32("misc_select")
    rd.take(28, "reserved")
    attributes = rd.take(16, "attributes")
    mr_enclave = rd.take(32, "mr_enclave")
    rd.take(32, "reserved")
    mr_signer = rd.take(32, "mr_signer")
    rd.take(96, "reserved")
    isv_prod_id = rd.u16("isv_prod_id")
    isv_svn = rd.u16("isv_svn")
    rd.take(60, "reserved")
    report_data = rd.take(64, "report_data")
    return QeReport(
        cpu_svn, misc_select, attributes, mr_enclave, mr_signer, isv_prod_id, isv_svn, report_data
    )


def _parse_qe_cert_data(blob: bytes) -> tuple[QeReport, bytes, bytes, bytes]:
    rd = _Reader(blob, "QE report certification data")
    qe_report = parse_enclave_report(rd.take(ENCLAVE_REPORT_LEN, "QE report"))
    qe_sig = rd.take(64, "QE report signature")
    auth_len = rd.u16("QE authentication data size")
    qe_auth = rd.take(auth_len, "QE authentication data")
    inner_type = rd.u16("PCK certification data type")
    inner_size = rd.u32("PCK certification data size")
    chain = rd.take(inner_size, "PCK certificate chain")
    if rd.pos != len(blob):
        raise QuoteFormatError(f"{len(blob) - rd.pos} stray bytes after the PCK certificate chain")
    if inner_type != CERT_TYPE_PCK_CHAIN:
        raise QuoteFormatError(
            f"PCK certification data type {inner_type} is not supported: the quote must embed "
            "the PEM PCK certificate chain (type 5)"
        )
    return qe_report, qe_sig, qe_auth, chain


def _load_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    try:
        certs = x509.load_pem_x509_certificates(pem.rstrip(b"\x00"))
    except ValueError as exc:
        raise QuoteFormatError(f"PCK certificate chain is not valid PEM: {exc}") from None
    if len(certs) < 2:
        raise QuoteFormatError(f"PCK certificate chain has {len(certs)} certificate(s), need ≥ 2")
    return tuple(certs)


def _pck_info(leaf: x509.Certificate) -> PckInfo:
    try:
        ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(der.SGX_EXTENSION))
    except x509.ExtensionNotFound:
        raise QuoteFormatError("PCK leaf certificate has no Intel SGX extension") from None
    except ValueError as exc:  # duplicate or malformed extensions
        raise QuoteFormatError(f"PCK leaf certificate extensions are malformed: {exc}") from None
    if not isinstance(ext.value, x509.UnrecognizedExtension):
        raise QuoteFormatError("PCK leaf certificate's Intel SGX extension is not opaque DER")
    try:
        return parse_sgx_extension(ext.value.value, _issuer_ca(leaf))
    except der.DerError as exc:
        raise QuoteFormatError(f"malformed Intel SGX extension: {exc}") from None


def _issuer_ca(leaf: x509.Certificate) -> str:
    names = leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else ""
    return "processor" if "Processor" in cn else "platform"


def parse_sgx_extension(value: bytes, ca: str = "platform") -> PckInfo:
    tag, body, end = der.read_tlv(value)
    if tag != der.SEQUENCE or end != len(value):
        raise der.DerError("SGX extension is not a single SEQUENCE")
    top = der.oid_map(body)

    def need(oid: str, tag: int, size: int | None = None) -> bytes:
        if oid not in top or top[oid][0] != tag:
            raise der.DerError(f"SGX extension lacks {oid}")
        val = top[oid][1]
        if size is not None and len(val) != size:
            raise der.DerError(f"{oid} is {len(val)} bytes, expected {size}")
        return val

    tcb = der.oid_map(need(der.TCB, der.SEQUENCE))
    components = []
    for i in range(1, 17):
        entry = tcb.get(f"{der.TCB}.{i}")
        if entry is None or entry[0] != der.INTEGER:
            raise der.DerError(f"TCB component {i} missing")
        components.append(der.decode_uint(entry[1]))
    pcesvn = tcb.get(der.PCESVN)
    cpusvn = tcb.get(der.CPUSVN)
    if pcesvn is None or pcesvn[0] != der.INTEGER:
        raise der.DerError("PCESVN missing")
    if cpusvn is None or cpusvn[0] != der.OCTET_STRING or len(cpusvn[1]) != 16:
        raise der.DerError("CPUSVN missing")
    return PckInfo(
        fmspc=need(der.FMSPC, der.OCTET_STRING, 6),
        pce_id=need(der.PCEID, der.OCTET_STRING, 2),
        ppid=need(der.PPID, der.OCTET_STRING, 16),
        cpu_svn=cpusvn[1],
        pce_svn=der.decode_uint(pcesvn[1]),
        tcb_components=tuple(components),
        sgx_type=der.decode_uint(need(der.SGX_TYPE, der.ENUMERATED)),
        ca=ca,
    )
