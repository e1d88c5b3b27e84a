"""TON addresses for billing: cocoon.core.ton_address, with billing's error type."""

from __future__ import annotations

from cocoon.billing.money import BillingError
from cocoon.core.ton_address import TonAddressError, parse_ton_address


class AddressError(BillingError):
    """Not a valid TON address (bad length, checksum, workchain or characters)."""


def parse_address(text: object) -> str:
    """The raw form (`0:<64 hex>`) of a raw or user-friendly address, or AddressError."""
    try:
        return parse_ton_address(text).raw
    except TonAddressError as exc:
        raise AddressError(f"malformed TON address: {exc}") from None


def friendly(raw: str, *, bounceable: bool = False, testnet: bool = False) -> str:
    """User-friendly form. Payout destinations are non-bounceable so uninitialised wallets
    (a fresh worker wallet) keep the funds instead of bouncing them back."""
    try:
        return parse_ton_address(raw).friendly(bounceable=bounceable, testnet=testnet)
    except TonAddressError as exc:
        raise AddressError(f"malformed TON address: {exc}") from None
