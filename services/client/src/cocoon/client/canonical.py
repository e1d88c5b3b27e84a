"""Canonical bytes and Ed25519 signatures over them (`cocoon/canonical`, docs/crypto.md).

The same encoding as `cocoon.core.crypto.canonical`, written again here so the client installs
without the server stack; tests/client pins the two to the same bytes.

    enc(None) = "n"   enc(False/True) = "f" / "t"
    enc(int)  = "i" ‖ u32 len ‖ ASCII decimal      enc(str)   = "s" ‖ u32 len ‖ UTF-8
    enc(bytes) = "b" ‖ u32 len ‖ raw               enc(list)  = "l" ‖ u32 count ‖ items
    enc(map)  = "m" ‖ u32 count ‖ (u32 len ‖ key ‖ enc(value))...  sorted by key bytes
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cocoon.client.errors import WireError


def _length(n: int) -> bytes:
    if n > 2**32 - 1:
        raise WireError("value too large for canonical encoding")
    return struct.pack(">I", n)


def _encode(value: Any, out: list[bytes]) -> None:
    if value is None:
        out.append(b"n")
    elif value is True:
        out.append(b"t")
    elif value is False:
        out.append(b"f")
    elif isinstance(value, int):
        digits = str(int(value)).encode("ascii")
        out += (b"i", _length(len(digits)), digits)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out += (b"s", _length(len(raw)), raw)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out += (b"b", _length(len(raw)), raw)
    elif isinstance(value, Mapping):
        _encode_mapping(value, out)
    elif isinstance(value, list | tuple):
        out += (b"l", _length(len(value)))
        for item in value:
            _encode(item, out)
    else:
        raise WireError(f"no canonical encoding for {type(value).__name__}")


def _encode_mapping(mapping: Mapping[str, Any], out: list[bytes]) -> None:
    entries: list[tuple[bytes, Any]] = []
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise WireError("canonical mapping keys must be strings")
        entries.append((key.encode("utf-8"), value))
    entries.sort(key=lambda entry: entry[0])
    out += (b"m", _length(len(entries)))
    for encoded, value in entries:
        out += (_length(len(encoded)), encoded)
        _encode(value, out)


def canonical_bytes(mapping: Mapping[str, Any]) -> bytes:
    out: list[bytes] = []
    _encode_mapping(mapping, out)
    return b"".join(out)


def signed_message(domain: str, mapping: Mapping[str, Any]) -> bytes:
    return canonical_bytes({"domain": domain, "payload": mapping})


def verify_signed(
    public_key: bytes, domain: str, mapping: Mapping[str, Any], signature: bytes
) -> bool:
    """Whether `signature` is the Ed25519 signature of `mapping` under `domain` by the key."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes(public_key))
        key.verify(bytes(signature), signed_message(domain, mapping))
    except (InvalidSignature, ValueError):
        return False
    return True
