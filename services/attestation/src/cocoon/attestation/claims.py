"""Worker claims and their canonical byte encoding; REPORTDATA = SHA-512(encoding).

Encoding (version 1, and version 2 which adds the payout address), chosen over JSON so no
serializer quirk (escaping, number formats, key order) can make two implementations disagree:

    MAGIC = b"cocoon/claims/v1\\n"
    encoding = MAGIC ‖ field(1, signing_key) ‖ field(2, hpke_x25519)
                     ‖ field(3, hpke_mlkem768_x25519) ‖ field(4, model UTF-8)
                     ‖ field(5, freshness)
    field(tag, value) = u8 tag ‖ u32 big-endian len(value) ‖ value
    freshness = 0x01 ‖ nonce (16..64 bytes)        a nonce issued by the attestation service
              | 0x02 ‖ u64 big-endian unix seconds  a timestamp checked against a bound

    MAGIC_V2 = b"cocoon/claims/v2\\n"
    encoding = MAGIC_V2 ‖ the five fields above ‖ field(6, payout address)
    payout address = i8 workchain ‖ 32-byte account id   (cocoon.core.ton_address)

Version 2 binds the TON address the worker's earnings go to into REPORTDATA, like its keys:
neither the host nor the operator can change it without a new quote. Claims without an address
still encode as version 1, byte for byte.

Fields appear exactly once, in this order. Sizes: signing_key 32 (Ed25519 raw), hpke_x25519 32
(X25519 raw), hpke_mlkem768_x25519 1216 (ML-KEM-768 encapsulation key 1184 ‖ X25519 32),
model 1..256 bytes of UTF-8.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from cocoon.core.ton_address import TonAddress, TonAddressError, parse_ton_address

MAGIC = b"cocoon/claims/v1\n"
MAGIC_V2 = b"cocoon/claims/v2\n"
SIGNING_KEY_LEN = 32
X25519_LEN = 32
MLKEM768_X25519_LEN = 1184 + 32
MAX_MODEL_LEN = 256
NONCE_MIN, NONCE_MAX = 16, 64

_TAG_SIGNING, _TAG_X25519, _TAG_HYBRID, _TAG_MODEL, _TAG_FRESHNESS = 1, 2, 3, 4, 5
_TAG_PAYOUT = 6
_V1_TAGS = (_TAG_SIGNING, _TAG_X25519, _TAG_HYBRID, _TAG_MODEL, _TAG_FRESHNESS)
_KIND_NONCE, _KIND_TIMESTAMP = 1, 2


class ClaimsError(ValueError):
    """Claims that cannot be encoded or decoded."""


@dataclass(frozen=True)
class Freshness:
    """Exactly one of `nonce` (service-issued) or `timestamp` (unix seconds)."""

    nonce: bytes | None = None
    timestamp: int | None = None

    def __post_init__(self) -> None:
        if (self.nonce is None) == (self.timestamp is None):
            raise ClaimsError("freshness needs exactly one of nonce or timestamp")
        if self.nonce is not None and not NONCE_MIN <= len(self.nonce) <= NONCE_MAX:
            raise ClaimsError(f"nonce must be {NONCE_MIN}..{NONCE_MAX} bytes")
        if self.timestamp is not None and not 0 <= self.timestamp < 2**64:
            raise ClaimsError("timestamp out of range")

    def encode(self) -> bytes:
        if self.nonce is not None:
            return bytes([_KIND_NONCE]) + self.nonce
        return bytes([_KIND_TIMESTAMP]) + struct.pack(">Q", self.timestamp)

    @classmethod
    def decode(cls, blob: bytes) -> Freshness:
        if not blob:
            raise ClaimsError("empty freshness field")
        if blob[0] == _KIND_NONCE:
            return cls(nonce=blob[1:])
        if blob[0] == _KIND_TIMESTAMP and len(blob) == 9:
            return cls(timestamp=struct.unpack(">Q", blob[1:])[0])
        raise ClaimsError("unknown freshness kind")


@dataclass(frozen=True)
class Claims:
    signing_key: bytes
    hpke_x25519: bytes
    hpke_mlkem768_x25519: bytes
    model: str
    freshness: Freshness
    payout_address: str | None = None  # raw form `wc:hex`; None encodes as version 1

    def __post_init__(self) -> None:
        if self.payout_address is not None:
            try:
                raw = parse_ton_address(self.payout_address).raw
            except TonAddressError as exc:
                raise ClaimsError(f"payout address: {exc}") from None
            object.__setattr__(self, "payout_address", raw)  # one spelling per address
        for name, size in (
            ("signing_key", SIGNING_KEY_LEN),
            ("hpke_x25519", X25519_LEN),
            ("hpke_mlkem768_x25519", MLKEM768_X25519_LEN),
        ):
            if len(getattr(self, name)) != size:
                raise ClaimsError(f"{name} must be {size} bytes")
        model = self.model.encode()
        if not 1 <= len(model) <= MAX_MODEL_LEN:
            raise ClaimsError(f"model must be 1..{MAX_MODEL_LEN} bytes of UTF-8")

    def encode(self) -> bytes:
        fields = [
            (_TAG_SIGNING, self.signing_key),
            (_TAG_X25519, self.hpke_x25519),
            (_TAG_HYBRID, self.hpke_mlkem768_x25519),
            (_TAG_MODEL, self.model.encode()),
            (_TAG_FRESHNESS, self.freshness.encode()),
        ]
        magic = MAGIC
        if self.payout_address is not None:
            magic = MAGIC_V2
            fields.append((_TAG_PAYOUT, parse_ton_address(self.payout_address).to_bytes()))
        parts = [magic]
        for tag, value in fields:
            parts.append(struct.pack(">BI", tag, len(value)) + value)
        return b"".join(parts)

    def report_data(self) -> bytes:
        """The 64 bytes a TD must put in REPORTDATA for these claims."""
        return hashlib.sha512(self.encode()).digest()

    @classmethod
    def decode(cls, blob: bytes) -> Claims:
        if blob.startswith(MAGIC):
            pos, tags = len(MAGIC), _V1_TAGS
        elif blob.startswith(MAGIC_V2):
            pos, tags = len(MAGIC_V2), (*_V1_TAGS, _TAG_PAYOUT)
        else:
            raise ClaimsError("not a cocoon/claims/v1 or v2 encoding")
        values = []
        for expected in tags:
            if pos + 5 > len(blob):
                raise ClaimsError("truncated claims")
            tag, size = struct.unpack(">BI", blob[pos : pos + 5])
            if tag != expected or pos + 5 + size > len(blob):
                raise ClaimsError("malformed claims field")
            values.append(blob[pos + 5 : pos + 5 + size])
            pos += 5 + size
        if pos != len(blob):
            raise ClaimsError("trailing bytes after claims")
        try:
            model = values[3].decode()
        except UnicodeDecodeError:
            raise ClaimsError("model is not UTF-8") from None
        address = None
        if len(values) > len(_V1_TAGS):
            try:
                address = TonAddress.from_bytes(values[5]).raw
            except TonAddressError as exc:
                raise ClaimsError(f"payout address: {exc}") from None
        return cls(values[0], values[1], values[2], model, Freshness.decode(values[4]), address)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "signing_key": self.signing_key.hex(),
            "hpke_x25519": self.hpke_x25519.hex(),
            "hpke_mlkem768_x25519": self.hpke_mlkem768_x25519.hex(),
            "model": self.model,
        }
        if self.payout_address is not None:
            out["payout_address"] = self.payout_address
        if self.freshness.nonce is not None:
            out["nonce"] = self.freshness.nonce.hex()
        else:
            out["timestamp"] = self.freshness.timestamp
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Claims:
        try:
            fresh = (
                Freshness(nonce=bytes.fromhex(d["nonce"]))
                if "nonce" in d
                else Freshness(timestamp=int(d["timestamp"]))
            )
            return cls(
                bytes.fromhex(d["signing_key"]),
                bytes.fromhex(d["hpke_x25519"]),
                bytes.fromhex(d["hpke_mlkem768_x25519"]),
                str(d["model"]),
                fresh,
                d.get("payout_address"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            if isinstance(exc, ClaimsError):
                raise
            raise ClaimsError(f"bad claims document: {exc!r}") from None
