"""Integer money: nanoTON amounts, bounds, and the errors billing raises on bad input.

Every amount is a Python int of nanoTON. The wire format (Avro `long`) and the ledger both cap
values at int64, so anything outside [0, INT64_MAX] is refused where it enters, not where it
would overflow later.
"""

from __future__ import annotations

import re

INT64_MAX = 2**63 - 1
NANO_PER_TON = 1_000_000_000

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class BillingError(ValueError):
    """Bad input to billing: the message says exactly what was wrong."""


class AmountError(BillingError):
    """A negative, non-integer or out-of-range amount."""


class UnknownAccountError(BillingError):
    """An operation named an account that was never opened."""


class GrantError(BillingError):
    """A request named an admission grant that cannot fund it (unknown, closed, exhausted)."""


class LedgerStateError(BillingError):
    """The engine's indices disagree with its ledger: a bug in billing, not in the input. The
    record that met it is dead-lettered with this message and nothing is recorded for it."""


class InsufficientFundsError(BillingError):
    """A hold larger than the client's available balance; `shortfall` is exact."""

    def __init__(self, account_id: str, needed: int, available: int) -> None:
        self.account_id = account_id
        self.needed = needed
        self.available = available
        self.shortfall = needed - available
        super().__init__(
            f"insufficient funds on {account_id}: needs {needed} nanoTON, "
            f"has {available}, short by {self.shortfall}"
        )


def check_amount(value: object, what: str, *, allow_zero: bool = True) -> int:
    """`value` as a validated nanoTON amount, or AmountError naming `what`."""
    # bool is an int subclass; True nanoTON is a bug, not an amount.
    if isinstance(value, bool) or not isinstance(value, int):
        raise AmountError(f"{what} must be an integer number of nanoTON, got {value!r}")
    if value < 0:
        raise AmountError(f"{what} must not be negative, got {value}")
    if value == 0 and not allow_zero:
        raise AmountError(f"{what} must be positive")
    if value > INT64_MAX:
        raise AmountError(f"{what} exceeds int64 ({value} > {INT64_MAX})")
    return value


def check_count(value: object, what: str) -> int:
    """A non-negative int64 count (tokens, bytes, coefficients)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BillingError(f"{what} must be an integer, got {value!r}")
    if value < 0:
        raise BillingError(f"{what} must not be negative, got {value}")
    if value > INT64_MAX:
        raise BillingError(f"{what} exceeds int64 ({value})")
    return value


def check_id(value: object, what: str) -> str:
    """An identifier safe to embed in account names and entry ids (no ':' or spaces)."""
    if not isinstance(value, str) or not _ID.match(value):
        raise BillingError(
            f"{what} must be 1-128 characters of letters, digits, '_', '.', '-', got {value!r}"
        )
    return value
