"""Just enough DER to read and write Intel's SGX extension in PCK certificates.

The extension (OID 1.2.840.113741.1.13.1) is a SEQUENCE of (OID, value) pairs, one of which (TCB)
nests another such SEQUENCE. `cryptography` exposes it as opaque bytes, so we walk it ourselves.
"""

from __future__ import annotations

SEQUENCE = 0x30
OID = 0x06
INTEGER = 0x02
OCTET_STRING = 0x04
ENUMERATED = 0x0A
BOOLEAN = 0x01

# Intel SGX extension OIDs (Intel SGX PCK Certificate and CRL Profile).
SGX_EXTENSION = "1.2.840.113741.1.13.1"
PPID = SGX_EXTENSION + ".1"
TCB = SGX_EXTENSION + ".2"
PCESVN = TCB + ".17"
CPUSVN = TCB + ".18"
PCEID = SGX_EXTENSION + ".3"
FMSPC = SGX_EXTENSION + ".4"
SGX_TYPE = SGX_EXTENSION + ".5"
PLATFORM_INSTANCE_ID = SGX_EXTENSION + ".6"
CONFIGURATION = SGX_EXTENSION + ".7"


class DerError(ValueError):
    """Malformed DER."""


# ---- writing -------------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _length(len(value)) + value


def seq(*items: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(items))


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return tlv(OID, bytes(out))


def _int_body(n: int) -> bytes:
    # Non-negative only; a leading zero keeps the sign bit clear.
    return n.to_bytes(n.bit_length() // 8 + 1, "big")


def integer(n: int) -> bytes:
    return tlv(INTEGER, _int_body(n))


def enumerated(n: int) -> bytes:
    return tlv(ENUMERATED, _int_body(n))


def octets(b: bytes) -> bytes:
    return tlv(OCTET_STRING, b)


def boolean(b: bool) -> bytes:
    return tlv(BOOLEAN, b"\xff" if b else b"\x00")


# ---- reading -------------------------------------------------------------------------------


def read_tlv(buf: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """Return (tag, value, next position); single-byte tags and definite lengths only."""
    if pos + 2 > len(buf):
        raise DerError("truncated DER element")
    tag = buf[pos]
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(buf):
            raise DerError("unsupported DER length")
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(buf):
        raise DerError("DER element overruns its container")
    return tag, buf[pos:end], end


def children(value: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos < len(value):
        tag, inner, pos = read_tlv(value, pos)
        out.append((tag, inner))
    return out


def decode_oid(body: bytes) -> str:
    if not body:
        raise DerError("empty OID")
    arcs = [body[0] // 40, body[0] % 40] if body[0] < 80 else [2, body[0] - 80]
    acc = 0
    for byte in body[1:]:
        acc = (acc << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(acc)
            acc = 0
    return ".".join(str(a) for a in arcs)


def decode_uint(body: bytes) -> int:
    if not body or body[0] & 0x80:
        raise DerError("expected a non-negative INTEGER")
    return int.from_bytes(body, "big")


def oid_map(value: bytes) -> dict[str, tuple[int, bytes]]:
    """Map a SEQUENCE OF SEQUENCE { OID, value } to {oid: (tag, value)}."""
    out: dict[str, tuple[int, bytes]] = {}
    for tag, entry in children(value):
        if tag != SEQUENCE:
            raise DerError("expected SEQUENCE { OID, value }")
        parts = children(entry)
        if len(parts) != 2 or parts[0][0] != OID:
            raise DerError("expected SEQUENCE { OID, value }")
        out[decode_oid(parts[0][1])] = parts[1]
    return out
