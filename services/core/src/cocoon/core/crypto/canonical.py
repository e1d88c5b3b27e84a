"""Canonical bytes of structured data, and Ed25519 signatures over them.

Signed things (usage receipts, attestation verdicts, claims documents) must have exactly one byte
encoding, whatever language or serializer produced them. JSON is not enough on its own (number
formats, escaping, no bytes type), so the encoding is a small type-tagged, length-prefixed one:

    enc(None)        = b"n"
    enc(False/True)  = b"f" / b"t"
    enc(int)         = b"i" ‖ u32 len ‖ ASCII decimal (shortest form, "-" for negatives)
    enc(str)         = b"s" ‖ u32 len ‖ UTF-8
    enc(bytes)       = b"b" ‖ u32 len ‖ raw bytes
    enc(list/tuple)  = b"l" ‖ u32 count ‖ enc(item) ...
    enc(mapping)     = b"m" ‖ u32 count ‖ (u32 len ‖ key UTF-8 ‖ enc(value)) ...
                       entries sorted by the key's UTF-8 bytes; keys must be str

u32 is big-endian. Floats are refused (their text form differs between languages); encode
amounts as integers of a small unit. See docs/crypto.md.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cocoon.core.crypto.errors import CanonicalError, SignatureError

_MAX_LEN = 2**32 - 1


def _length(n: int) -> bytes:
    if n > _MAX_LEN:
        raise CanonicalError("value too large for canonical encoding")
    return struct.pack(">I", n)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalError("string is not valid Unicode (lone surrogate)") from None


def _encode(value: Any, out: list[bytes]) -> None:
    # bool before int: bool is a subclass of int in Python.
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
        raw = _utf8(value)
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
        raise CanonicalError(f"no canonical encoding for {type(value).__name__}")


def _encode_mapping(mapping: Mapping[str, Any], out: list[bytes]) -> None:
    entries = []
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise CanonicalError(f"mapping keys must be str, not {type(key).__name__}")
        entries.append((_utf8(key), value))
    entries.sort(key=lambda entry: entry[0])
    out += (b"m", _length(len(entries)))
    for encoded_key, value in entries:
        out += (_length(len(encoded_key)), encoded_key)
        _encode(value, out)


def canonical_bytes(mapping: Mapping[str, Any]) -> bytes:
    """The one byte encoding of `mapping` (see the module docstring); equal data, equal bytes."""
    if not isinstance(mapping, Mapping):
        raise CanonicalError("canonical_bytes takes a mapping at the top level")
    out: list[bytes] = []
    _encode_mapping(mapping, out)
    return b"".join(out)


def signed_message(domain: str, mapping: Mapping[str, Any]) -> bytes:
    """The exact bytes `sign_canonical` signs, for verifiers that hold raw Ed25519 keys."""
    # The domain separates kinds of signed documents: a receipt signature can never pass as
    # a verdict signature even if the fields happened to coincide.
    if not domain:
        raise CanonicalError("a signature domain is required")
    return canonical_bytes({"domain": domain, "payload": mapping})


def sign_canonical(key: Ed25519PrivateKey, domain: str, mapping: Mapping[str, Any]) -> bytes:
    """Ed25519 signature (64 bytes) over the canonical bytes of `mapping` under `domain`."""
    return key.sign(signed_message(domain, mapping))


def load_ed25519_public(key: bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    """An Ed25519 public key from its 32 raw bytes (or the key itself)."""
    if isinstance(key, Ed25519PublicKey):
        return key
    try:
        return Ed25519PublicKey.from_public_bytes(bytes(key))
    except ValueError:
        raise SignatureError("not a 32-byte Ed25519 public key") from None


def verify_canonical(
    public_key: bytes | Ed25519PublicKey,
    domain: str,
    mapping: Mapping[str, Any],
    signature: bytes,
) -> None:
    """Raise `SignatureError` unless `signature` is `sign_canonical` of the same inputs."""
    message = signed_message(domain, mapping)
    try:
        load_ed25519_public(public_key).verify(bytes(signature), message)
    except InvalidSignature:
        raise SignatureError(f"bad {domain} signature") from None
