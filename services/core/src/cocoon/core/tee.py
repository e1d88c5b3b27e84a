"""The worker's view of its TEE: the attested claims encoding and the quote interface.

`get_quote(report_data)` is the stand-in for the hardware call a TDX guest makes
(`tdx_att_get_quote` in Intel's DCAP library, or the kernel's configfs-tsm report): hand in 64
bytes of REPORTDATA, get back a signed TDX quote. The device is a plugin chosen by `COCOON_TEE`
(an entry point of the `cocoon.tee` group). The one installed here, `simulated`, is the
simulated TDX of the attestation package (`cocoon.attestation.simtdx:quote_device`): real-format
quotes under a local test CA shared with the attestation service through the project cache,
which only a development policy trusts. A real TDX guest registers its own device.

The claims encoding (`cocoon/claims/v1`, and `v2` which adds the payout address, see
docs/attestation.md) is repeated here so a worker can build the bytes it attests to without
importing the attestation service; the layout is pinned by a test against
`cocoon.attestation.claims.Claims.encode`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
from collections.abc import Callable
from importlib.metadata import entry_points

from cocoon.core.crypto.keys import WorkerPublicKeys
from cocoon.core.ton_address import TonAddressError, parse_ton_address

CLAIMS_MAGIC = b"cocoon/claims/v1\n"
# v2 = v1's fields, then field 6: the TON address the worker's earnings are paid to.
CLAIMS_MAGIC_V2 = b"cocoon/claims/v2\n"
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
    payout_address: str | None = None,
) -> bytes:
    """The canonical claims bytes: public keys, model and exactly one freshness proof, and
    the payout address when given (v2: earnings can then only be paid there)."""
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
    fields = [
        _field(1, keys.signing_key),
        _field(2, keys.hpke_x25519),
        _field(3, keys.hpke_mlkem768_x25519),
        _field(4, model_bytes),
        _field(5, freshness),
    ]
    if payout_address is None:
        return CLAIMS_MAGIC + b"".join(fields)
    try:
        address = parse_ton_address(payout_address)
    except TonAddressError as exc:
        raise TeeError(f"payout address: {exc}") from None
    return CLAIMS_MAGIC_V2 + b"".join((*fields, _field(6, address.to_bytes())))


def report_data(claims: bytes) -> bytes:
    """REPORTDATA binding a quote to these claims: SHA-512 of the encoding."""
    return hashlib.sha512(claims).digest()


TEE_SETTING = "COCOON_TEE"  # which quote device: an entry point name, default "simulated"
ENTRY_POINT_GROUP = "cocoon.tee"
SIMULATED = "simulated"  # the development device: quotes under a local test CA, never trusted


def installed_devices() -> list[str]:
    """Names of the quote devices installed in this environment (a setting picks one)."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


@functools.cache
def _device(name: str) -> Callable[[bytes], bytes]:
    # Quote devices are plugins (entry points of the `cocoon.tee` group), so this module names
    # no implementation: the simulated TDX ships with the attestation package, which registers it.
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise TeeError(
            f"no TEE quote device {name!r} ({TEE_SETTING}); installed: {installed_devices()}"
        )
    return found[0].load()


def get_quote(report_data: bytes) -> bytes:
    """A TDX quote over `report_data` (64 bytes), as `tdx_att_get_quote` would return it."""
    if len(report_data) != REPORT_DATA_LEN:
        raise TeeError(f"REPORTDATA is {REPORT_DATA_LEN} bytes, got {len(report_data)}")
    return _device(os.environ.get(TEE_SETTING) or SIMULATED)(bytes(report_data))
