"""The bytes of `Evidence.gpu_evidence` (`cocoon/gpu-evidence/v1`) and the GPU nonce.

A worker with an NVIDIA GPU in confidential-computing mode asks the GPU for an attestation
report over `gpu_nonce(claims)`, and puts the report and the GPU's certificate chain into its
Evidence record with `encode_gpu_evidence`. The attestation service reads them back with
`decode_gpu_evidence` (`cocoon.attestation.gpu.verify.GpuEvidence.decode`). This module is the
contract between the two, so neither imports the other; docs/attestation.md has the layout:

    encoding = b"cocoon/gpu-evidence/v1\\n"
             ‖ field(1, report: SPDM GET_MEASUREMENTS request ‖ MEASUREMENTS response, signed)
             ‖ field(2, cert_chain: leaf first, PEM text or concatenated DER)
    field(tag, v) = u8 tag ‖ u32be len(v) ‖ v

    gpu_nonce = SHA-256(b"cocoon/gpu-nonce/v1\\n" ‖ SHA-512(claims encoding))   (32 bytes)

Each field appears exactly once, in this order, non-empty and within its cap; nothing follows.
"""

from __future__ import annotations

import hashlib
import struct

GPU_EVIDENCE_MAGIC = b"cocoon/gpu-evidence/v1\n"
GPU_NONCE_DOMAIN = b"cocoon/gpu-nonce/v1\n"
MAX_REPORT_BYTES = 16 * 1024  # as cocoon.attestation.gpu.report.MAX_REPORT_BYTES
MAX_CHAIN_BYTES = 32 * 1024  # as cocoon.attestation.gpu.certs
MAX_GPU_EVIDENCE_BYTES = len(GPU_EVIDENCE_MAGIC) + 2 * 5 + MAX_REPORT_BYTES + MAX_CHAIN_BYTES
_FIELDS = ((1, "report", MAX_REPORT_BYTES), (2, "cert_chain", MAX_CHAIN_BYTES))


class GpuEvidenceFormatError(ValueError):
    """Bytes that are not a `cocoon/gpu-evidence/v1` container."""


def encode_gpu_evidence(report: bytes, cert_chain: bytes) -> bytes:
    """The container for one GPU's report and certificate chain."""
    out = [GPU_EVIDENCE_MAGIC]
    for (tag, name, cap), value in zip(_FIELDS, (report, cert_chain), strict=True):
        if not 1 <= len(value) <= cap:
            raise GpuEvidenceFormatError(f"{name} must be 1..{cap} bytes, got {len(value)}")
        out.append(struct.pack(">BI", tag, len(value)) + bytes(value))
    return b"".join(out)


def decode_gpu_evidence(data: bytes) -> tuple[bytes, bytes]:
    """(report, cert_chain); any deviation from the layout raises GpuEvidenceFormatError."""
    data = bytes(data)
    if len(data) > MAX_GPU_EVIDENCE_BYTES:
        raise GpuEvidenceFormatError(f"GPU evidence is over {MAX_GPU_EVIDENCE_BYTES} bytes")
    if not data.startswith(GPU_EVIDENCE_MAGIC):
        raise GpuEvidenceFormatError("not cocoon/gpu-evidence/v1 (bad magic)")
    pos, values = len(GPU_EVIDENCE_MAGIC), []
    for tag, name, cap in _FIELDS:
        if len(data) - pos < 5:
            raise GpuEvidenceFormatError(f"truncated before field {tag} ({name})")
        got, size = struct.unpack_from(">BI", data, pos)
        if got != tag:
            raise GpuEvidenceFormatError(f"expected field {tag} ({name}), found tag {got}")
        pos += 5
        if not 1 <= size <= cap:
            raise GpuEvidenceFormatError(f"{name} must be 1..{cap} bytes, got {size}")
        if len(data) - pos < size:
            raise GpuEvidenceFormatError(f"{name} is truncated")
        values.append(data[pos : pos + size])
        pos += size
    if pos != len(data):
        raise GpuEvidenceFormatError(f"{len(data) - pos} stray bytes after the last field")
    return values[0], values[1]


def gpu_nonce(claims: bytes) -> bytes:
    """The 32-byte nonce the worker hands its GPU, from the canonical claims bytes: it binds the
    GPU report to the same keys, model and freshness as the TDX quote's REPORTDATA."""
    return hashlib.sha256(GPU_NONCE_DOMAIN + hashlib.sha512(claims).digest()).digest()
