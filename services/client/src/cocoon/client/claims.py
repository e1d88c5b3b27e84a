"""The worker claims a TDX quote binds (`cocoon/claims/v1`, docs/attestation.md).

REPORTDATA = SHA-512(encoding). The encoding carries the worker's Ed25519 receipt key, its two
HPKE keys, its model and a freshness value; the client seals only to keys it found here, in
claims whose hash the verified quote carries.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cocoon.client.errors import WireError

MAGIC = b"cocoon/claims/v1\n"
_SIZES = {1: 32, 2: 32, 3: 1184 + 32}  # Ed25519, X25519, ML-KEM-768 ek ‖ X25519


@dataclass(frozen=True)
class WorkerClaims:
    encoding: bytes
    signing_key: bytes
    hpke_x25519: bytes
    hpke_mlkem768_x25519: bytes
    model: str
    nonce: bytes | None  # freshness: a challenge of the attestation service ...
    timestamp: int | None  # ... or unix seconds

    def report_data(self) -> bytes:
        return hashlib.sha512(self.encoding).digest()

    @classmethod
    def decode(cls, blob: bytes) -> WorkerClaims:
        if not blob.startswith(MAGIC):
            raise WireError("claims are not a cocoon/claims/v1 encoding")
        pos, values = len(MAGIC), []
        for tag in (1, 2, 3, 4, 5):
            if pos + 5 > len(blob):
                raise WireError("truncated claims")
            got, size = struct.unpack(">BI", blob[pos : pos + 5])
            if got != tag or pos + 5 + size > len(blob):
                raise WireError("malformed claims field")
            values.append(blob[pos + 5 : pos + 5 + size])
            pos += 5 + size
        if pos != len(blob):
            raise WireError("trailing bytes after claims")
        for tag, size in _SIZES.items():
            if len(values[tag - 1]) != size:
                raise WireError(f"claims field {tag} must be {size} bytes")
        try:
            model = values[3].decode()
        except UnicodeDecodeError:
            raise WireError("claims model is not UTF-8") from None
        fresh = values[4]
        nonce = timestamp = None
        if fresh[:1] == b"\x01" and 16 <= len(fresh) - 1 <= 64:
            nonce = fresh[1:]
        elif fresh[:1] == b"\x02" and len(fresh) == 9:
            timestamp = struct.unpack(">Q", fresh[1:])[0]
        else:
            raise WireError("claims freshness is neither a nonce nor a timestamp")
        return cls(bytes(blob), values[0], values[1], values[2], model, nonce, timestamp)
