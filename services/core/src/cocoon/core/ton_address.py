"""TON account addresses: parsed once, at the edge, into a workchain and a 32-byte account id.

Two text forms exist (TON's "Smart contract addresses" documentation):

    raw            <workchain>:<64 hex digits>             e.g. 0:83df…a1c4
    user-friendly  48 characters of base64 or base64url over 36 bytes:
                   tag (1) ‖ workchain (1, signed) ‖ account id (32) ‖ CRC16-XMODEM (2, BE)
                   tag = 0x11 bounceable | 0x51 non-bounceable, + 0x80 for a testnet-only address

The user-friendly form carries a checksum (a mistyped address is refused, not paid) and two
flags. Cocoon keeps only what identifies the account; payouts are sent non-bounceable whatever
form the owner gave, so a wallet that is not deployed yet keeps the funds instead of bouncing
them. Only the basechain (0) and the masterchain (-1) exist.

Workers (the payout address they attest), the attestation service and billing all parse with
this module, so the three agree on what an address is.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

WORKCHAINS = (0, -1)
_BOUNCEABLE, _NON_BOUNCEABLE, _TESTNET = 0x11, 0x51, 0x80
_RAW = re.compile(r"^(-?\d+):([0-9a-fA-F]{64})$")
_BINARY_LEN = 33  # workchain (signed byte) ‖ account id: the attested form


class TonAddressError(ValueError):
    """Not a valid TON address: say which part is wrong."""


def crc16_xmodem(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


@dataclass(frozen=True, slots=True)
class TonAddress:
    workchain: int
    account_id: bytes  # 32 bytes
    # Flags of the user-friendly text it was parsed from (None for the raw form).
    bounceable: bool | None = None
    testnet_only: bool | None = None

    def __post_init__(self) -> None:
        if self.workchain not in WORKCHAINS:
            raise TonAddressError(f"unknown workchain {self.workchain} (only 0 and -1 exist)")
        if len(self.account_id) != 32:
            raise TonAddressError("an account id is 32 bytes")

    @property
    def raw(self) -> str:
        """`<workchain>:<hex>`: the canonical form Cocoon stores and compares."""
        return f"{self.workchain}:{self.account_id.hex()}"

    def friendly(self, *, bounceable: bool = False, testnet: bool = False) -> str:
        """The base64url user-friendly form (non-bounceable by default, as payouts are sent)."""
        tag = (_BOUNCEABLE if bounceable else _NON_BOUNCEABLE) | (_TESTNET if testnet else 0)
        body = bytes([tag, self.workchain & 0xFF]) + self.account_id
        checksum = crc16_xmodem(body).to_bytes(2, "big")
        return base64.urlsafe_b64encode(body + checksum).decode()

    def to_bytes(self) -> bytes:
        """33 bytes, workchain (signed) then account id: the form bound into attested claims."""
        return self.workchain.to_bytes(1, "big", signed=True) + self.account_id

    @classmethod
    def from_bytes(cls, data: bytes) -> TonAddress:
        if len(data) != _BINARY_LEN:
            raise TonAddressError(f"an attested address is {_BINARY_LEN} bytes, got {len(data)}")
        return cls(int.from_bytes(data[:1], "big", signed=True), bytes(data[1:]))


def parse_ton_address(text: object) -> TonAddress:
    """A raw or user-friendly address, validated (workchain, checksum, flags), or the error."""
    if not isinstance(text, str) or not text.strip():
        raise TonAddressError(f"a TON address is a non-empty string, got {text!r}")
    text = text.strip()
    raw = _RAW.match(text)
    if raw:
        return TonAddress(int(raw.group(1)), bytes.fromhex(raw.group(2)))
    if len(text) != 48:
        raise TonAddressError(
            f"{text!r} is neither a raw address (0:<64 hex>) nor a 48-character user-friendly one"
        )
    try:
        data = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise TonAddressError(f"{text!r} is not base64") from None
    body, checksum = data[:34], data[34:]
    if crc16_xmodem(body).to_bytes(2, "big") != checksum:
        raise TonAddressError(f"{text!r} has a wrong checksum (a typo?)")
    tag = body[0]
    if tag & ~_TESTNET not in (_BOUNCEABLE, _NON_BOUNCEABLE):
        raise TonAddressError(f"{text!r} has an unknown tag {tag:#04x} (bounceable flag)")
    workchain = int.from_bytes(body[1:2], "big", signed=True)
    return TonAddress(
        workchain,
        body[2:],
        bounceable=tag & ~_TESTNET == _BOUNCEABLE,
        testnet_only=bool(tag & _TESTNET),
    )


def raw_address(text: object) -> str:
    """The raw form of any accepted address text."""
    return parse_ton_address(text).raw
