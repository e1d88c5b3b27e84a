"""TON addresses: parse any accepted form once, at the edge, into the raw `wc:hex` form."""

from __future__ import annotations

from tonsdk.utils import Address

from cocoon.billing.money import BillingError


class AddressError(BillingError):
    """Not a valid TON address (bad length, checksum, workchain or characters)."""


def parse_address(text: object) -> str:
    """The raw form (`0:<64 hex>`) of a raw or user-friendly address, or AddressError."""
    if not isinstance(text, str) or not text.strip():
        raise AddressError(f"TON address must be a non-empty string, got {text!r}")
    try:
        address = Address(text.strip())
    except Exception as exc:  # tonsdk raises its own error types and bare ValueErrors
        raise AddressError(f"malformed TON address {text!r}: {exc}") from None
    if address.wc not in (0, -1):
        raise AddressError(f"TON address {text!r} has unknown workchain {address.wc}")
    return address.to_string(False)


def friendly(raw: str, *, bounceable: bool = False, testnet: bool = False) -> str:
    """User-friendly form. Payout destinations are non-bounceable so uninitialised wallets
    (a fresh worker wallet) keep the funds instead of bouncing them back."""
    return Address(parse_address(raw)).to_string(True, True, bounceable, testnet)


def same_address(a: str, b: str) -> bool:
    try:
        return parse_address(a) == parse_address(b)
    except AddressError:
        return False
