"""The worker's view of its TEE: the attested claims encoding and the quote interface.

`get_quote(report_data)` is the stand-in for the hardware call a TDX guest makes
(`tdx_att_get_quote` in Intel's DCAP library, or the kernel's configfs-tsm report): hand in 64
bytes of REPORTDATA, get back a signed TDX quote. Here it is backed by the simulated TDX
(`cocoon.attestation.simtdx`), which writes real-format quotes under a local test CA shared
with the attestation service through the project cache. That import is the one place outside
the attestation package that touches it, and only lazily: it plays the part of the hardware,
not of another service, so no worker code depends on attestation's domain logic.

The claims encoding (`cocoon/claims/v1`, docs/attestation.md) is repeated here so a worker can
build the bytes it attests to without importing the attestation service; the layout is pinned
by a test against `cocoon.attestation.claims.Claims.encode`.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from pathlib import Path
from typing import Any

from cocoon.core.crypto.keys import WorkerPublicKeys

CLAIMS_MAGIC = b"cocoon/claims/v1\n"
REPORT_DATA_LEN = 64
_MAX_MODEL_LEN = 256
_NONCE_MIN, _NONCE_MAX = 16, 64


class TeeError(RuntimeError):
    """The TEE could not produce what was asked (bad input, or no quote)."""


def _field(tag: int, value: bytes) -> bytes:
    return struct.pack(">BI", tag, len(value)) + value


def encode_claims(
    keys: WorkerPublicKeys,
    model: str,
    *,
    timestamp: int | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """The canonical claims bytes: public keys, model and exactly one freshness proof."""
    if (timestamp is None) == (nonce is None):
        raise TeeError("claims need exactly one of timestamp or nonce")
    model_bytes = model.encode()
    if not 1 <= len(model_bytes) <= _MAX_MODEL_LEN:
        raise TeeError(f"model must be 1..{_MAX_MODEL_LEN} bytes of UTF-8")
    if nonce is not None:
        if not _NONCE_MIN <= len(nonce) <= _NONCE_MAX:
            raise TeeError(f"nonce must be {_NONCE_MIN}..{_NONCE_MAX} bytes")
        freshness = b"\x01" + nonce
    else:
        if not 0 <= timestamp < 2**64:
            raise TeeError("timestamp out of range")
        freshness = b"\x02" + struct.pack(">Q", timestamp)
    return CLAIMS_MAGIC + b"".join(
        (
            _field(1, keys.signing_key),
            _field(2, keys.hpke_x25519),
            _field(3, keys.hpke_mlkem768_x25519),
            _field(4, model_bytes),
            _field(5, freshness),
        )
    )


def report_data(claims: bytes) -> bytes:
    """REPORTDATA binding a quote to these claims: SHA-512 of the encoding."""
    return hashlib.sha512(claims).digest()


_sim_lock = threading.Lock()
_sims: dict[Path, Any] = {}


def _simulated_tdx() -> Any:
    # Loaded once per process and CA directory: opening the shared test CA takes a file lock and
    # key parsing. Keyed by directory so a process that changes COCOON_CACHE_DIR (tests, several
    # local networks) never signs with another network's test CA.
    from cocoon.attestation.simtdx import SimTdx  # the hardware stand-in, see above

    directory = SimTdx.default_dir().resolve()
    with _sim_lock:
        if directory not in _sims:
            _sims[directory] = SimTdx.load_or_create(directory)
        return _sims[directory]


def get_quote(report_data: bytes) -> bytes:
    """A TDX quote over `report_data` (64 bytes), as `tdx_att_get_quote` would return it."""
    if len(report_data) != REPORT_DATA_LEN:
        raise TeeError(f"REPORTDATA is {REPORT_DATA_LEN} bytes, got {len(report_data)}")
    return _simulated_tdx().quote(bytes(report_data))
