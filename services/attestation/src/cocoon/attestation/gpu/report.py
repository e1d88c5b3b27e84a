"""NVIDIA GPU attestation report: an SPDM 1.1 GET_MEASUREMENTS request followed by the signed
MEASUREMENTS response, exactly as the driver hands it out (Hopper confidential computing).

    request  = version(1)=0x11 ‖ code(1)=0xE0 ‖ param1(1) ‖ param2(1) ‖ nonce(32) ‖ slot(1)
    response = version(1) ‖ code(1)=0x60 ‖ param1(1) ‖ param2(1) ‖ n_blocks(1)
             ‖ record_len(3, LE) ‖ record ‖ responder_nonce(32) ‖ opaque_len(2, LE) ‖ opaque
             ‖ signature(96: ECDSA P-384 r ‖ s over SHA-384(request ‖ response minus signature))
    block    = index(1) ‖ spec(1)=DMTF ‖ size(2, LE) ‖ value_type(1) ‖ value_size(2, LE) ‖ value
    opaque   = (type(2, LE) ‖ size(2, LE) ‖ value)*

The parser is strict: any truncation, inconsistent length or stray byte raises GpuEvidenceError.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

MAX_REPORT_BYTES = 16 * 1024  # a Hopper report is ~4 KiB; the cap bounds work on hostile input
SPDM_VERSION = 0x11  # SPDM 1.2+ signs a prefixed transcript; Hopper firmware speaks 1.1
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
NONCE_LEN = 32
REQUEST_LEN = 4 + NONCE_LEN + 1
SIGNATURE_LEN = 96  # ECDSA P-384, raw r ‖ s
DMTF_SPEC = 0x01

# Opaque data field types NVIDIA's firmware emits (the ones we name; others are kept raw).
OPAQUE_NAMES = {
    1: "cert_issuer_name",
    2: "cert_authority_key_identifier",
    3: "driver_version",
    4: "gpu_info",
    5: "sku",
    6: "vbios_version",
    7: "manufacturer_id",
    8: "tamper_detection",
    9: "smc",
    10: "vpr",
    11: "nvdec0_status",
    12: "msrscnt",
    13: "cprinfo",
    14: "board_id",
    15: "chip_sku",
    16: "chip_sku_mod",
    17: "project",
    18: "project_sku",
    19: "project_sku_mod",
    20: "fwid",
    21: "protected_pcie_status",
}
_TEXT_FIELDS = {"driver_version", "chip_sku", "chip_sku_mod", "project", "project_sku"}


class GpuEvidenceError(ValueError):
    """GPU evidence that cannot be parsed or is internally inconsistent."""


@dataclass(frozen=True)
class MeasurementBlock:
    index: int  # SPDM index, 1-based; NVIDIA's reference measurements use index - 1
    spec: int
    value_type: int
    value: bytes


@dataclass(frozen=True)
class GpuReport:
    raw: bytes
    request: bytes
    spdm_version: int
    nonce: bytes  # the verifier's nonce, from the request
    slot: int
    responder_nonce: bytes
    blocks: tuple[MeasurementBlock, ...]
    opaque: tuple[tuple[int, bytes], ...]  # (type, value) in report order
    signature: bytes

    @property
    def signed_bytes(self) -> bytes:
        """What the GPU's attestation key signs: request ‖ response without the signature."""
        return self.raw[: len(self.raw) - SIGNATURE_LEN]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def opaque_field(self, name: str) -> bytes | None:
        for kind, value in self.opaque:
            if OPAQUE_NAMES.get(kind) == name:
                return value
        return None

    def text(self, name: str) -> str | None:
        value = self.opaque_field(name)
        if value is None:
            return None
        return value.split(b"\x00", 1)[0].decode("ascii", errors="replace")

    @property
    def driver_version(self) -> str | None:
        return self.text("driver_version")

    @property
    def vbios_version(self) -> str | None:
        """Formatted as NVIDIA names VBIOS RIMs: 8 bytes → "96.00.9F.00.01"."""
        value = self.opaque_field("vbios_version")
        if value is None or len(value) < 5:
            return None
        major = struct.unpack("<I", value[:4])[0]
        parts = [(major >> shift) & 0xFF for shift in (24, 16, 8, 0)] + [value[4]]
        return ".".join(f"{p:02X}" for p in parts)

    @property
    def fwid(self) -> bytes | None:
        return self.opaque_field("fwid")

    def measurements(self) -> dict[int, bytes]:
        """Reference-measurement index (0-based, as in RIMs) → measured value."""
        return {b.index - 1: b.value for b in self.blocks}

    def summary(self) -> dict[str, object]:
        fields: dict[str, object] = {}
        for kind, value in self.opaque:
            name = OPAQUE_NAMES.get(kind, f"type_{kind}")
            fields[name] = self.text(name) if name in _TEXT_FIELDS else value.hex()
        fields["vbios_version"] = self.vbios_version
        return {
            "sha256": self.sha256,
            "spdm_version": f"{self.spdm_version >> 4}.{self.spdm_version & 0xF}",
            "nonce": self.nonce.hex(),
            "responder_nonce": self.responder_nonce.hex(),
            "measurements": {str(i): v.hex() for i, v in sorted(self.measurements().items())},
            "opaque": fields,
        }


class _Reader:
    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf, self.pos = buf, pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise GpuEvidenceError(f"truncated report: {what} needs {n} bytes at {self.pos}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u24(self, what: str) -> int:
        return int.from_bytes(self.take(3, what), "little")


def parse_report(raw: bytes) -> GpuReport:
    """Parse a GPU attestation report (bytes); raises GpuEvidenceError on anything malformed."""
    if not isinstance(raw, bytes | bytearray):
        raise GpuEvidenceError("report must be bytes")
    raw = bytes(raw)
    if len(raw) > MAX_REPORT_BYTES:
        raise GpuEvidenceError(f"report is {len(raw)} bytes, over the {MAX_REPORT_BYTES} cap")
    r = _Reader(raw)
    version = r.u8("request version")
    if version != SPDM_VERSION:
        raise GpuEvidenceError(f"unsupported SPDM version 0x{version:02x} (want 0x11)")
    if r.u8("request code") != GET_MEASUREMENTS:
        raise GpuEvidenceError("report does not start with an SPDM GET_MEASUREMENTS request")
    param1, param2 = r.u8("param1"), r.u8("param2")
    if not param1 & 0x01:
        raise GpuEvidenceError("request did not ask for a signature")
    if param2 != 0xFF:
        raise GpuEvidenceError(f"request asked for measurement {param2}, not all (0xff)")
    nonce = r.take(NONCE_LEN, "request nonce")
    slot = r.u8("slot id")
    request = raw[:REQUEST_LEN]

    if r.u8("response version") != version:
        raise GpuEvidenceError("response SPDM version differs from the request's")
    if r.u8("response code") != MEASUREMENTS:
        raise GpuEvidenceError("response is not an SPDM MEASUREMENTS message")
    r.take(2, "response params")
    n_blocks = r.u8("number of blocks")
    record = r.take(r.u24("record length"), "measurement record")
    blocks = _blocks(record)
    if len(blocks) != n_blocks:
        raise GpuEvidenceError(f"response says {n_blocks} blocks but the record has {len(blocks)}")
    responder_nonce = r.take(NONCE_LEN, "responder nonce")
    opaque = _opaque(r.take(r.u16("opaque length"), "opaque data"))
    signature = r.take(SIGNATURE_LEN, "signature")
    if r.pos != len(raw):
        raise GpuEvidenceError(f"{len(raw) - r.pos} stray bytes after the signature")
    return GpuReport(raw, request, version, nonce, slot, responder_nonce, blocks, opaque, signature)


def _blocks(record: bytes) -> tuple[MeasurementBlock, ...]:
    r = _Reader(record)
    out: list[MeasurementBlock] = []
    seen: set[int] = set()
    while r.pos < len(record):
        index, spec = r.u8("block index"), r.u8("measurement spec")
        body = _Reader(r.take(r.u16("measurement size"), f"measurement block {index}"))
        if spec != DMTF_SPEC:
            raise GpuEvidenceError(f"block {index}: measurement spec {spec} is not DMTF")
        if index in seen or index == 0:
            raise GpuEvidenceError(f"block index {index} is zero or repeated")
        seen.add(index)
        value_type = body.u8("value type")
        value = body.take(body.u16("value size"), f"block {index} value")
        if body.pos != len(body.buf):
            raise GpuEvidenceError(f"block {index}: size disagrees with its value size")
        out.append(MeasurementBlock(index, spec, value_type, value))
    return tuple(out)


def _opaque(data: bytes) -> tuple[tuple[int, bytes], ...]:
    r = _Reader(data)
    out: list[tuple[int, bytes]] = []
    while r.pos < len(data):
        kind = r.u16("opaque field type")
        out.append((kind, r.take(r.u16("opaque field size"), f"opaque field {kind}")))
    return tuple(out)
