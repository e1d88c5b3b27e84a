"""Prices and the cost of a request, in integer nanoTON.

Model (COCOON §3.1-3.3): a price per "adjusted token" in nanoTON; adjusted tokens are raw tokens
times the worker's price coefficient (1000 = 1.0x) times a per-category multiplier in basis points
(10000 = 1.0x). The client pays `price_per_token` per adjusted token, the worker earns
`worker_fee_per_token`, the network keeps the difference.

Rounding (deliberately not COCOON's): COCOON truncates each category's adjusted tokens to an
integer and then multiplies by the price, losing up to one adjusted token per category. We keep
the exact rational sum over categories and round down once, in nanoTON, separately for the
client charge and the worker fee. Commission = charge - fee, which is >= 0 because
price >= fee and floor is monotonic. The client is never charged a fraction it did not owe, and
the hold (rounded up) always covers the charge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cocoon.billing.money import BillingError, check_amount, check_count
from cocoon.core.holds import BPS_ONE, COEFFICIENT_ONE, max_hold_nanoton
from cocoon.core.holds import SCALE as _SCALE


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the engine's `usage` reports them (totals include the sub-counts)."""

    prompt: int
    cached: int
    completion: int
    reasoning: int

    def __post_init__(self) -> None:
        for name in ("prompt", "cached", "completion", "reasoning"):
            check_count(getattr(self, name), f"usage.{name}")
        if self.cached > self.prompt:
            raise BillingError(f"cached tokens ({self.cached}) exceed prompt ({self.prompt})")
        if self.reasoning > self.completion:
            raise BillingError(
                f"reasoning tokens ({self.reasoning}) exceed completion ({self.completion})"
            )


@dataclass(frozen=True, slots=True)
class Cost:
    """What one usage costs: the client's charge, the worker's fee and the commission."""

    charge: int
    worker_fee: int
    commission: int
    # Adjusted tokens x 10^7 (coefficient x bps scale), exact; for statements.
    scaled_adjusted_tokens: int


@dataclass(frozen=True, slots=True)
class Prices:
    """Network prices from the registry."""

    price_per_token: int
    worker_fee_per_token: int
    prompt_bps: int = BPS_ONE
    cached_bps: int = BPS_ONE
    completion_bps: int = BPS_ONE
    reasoning_bps: int = BPS_ONE
    # Registry coefficient per worker; workers not listed use default_coefficient.
    worker_coefficients: Mapping[str, int] = field(default_factory=dict)
    default_coefficient: int = COEFFICIENT_ONE

    def __post_init__(self) -> None:
        check_amount(self.price_per_token, "price_per_token", allow_zero=False)
        check_amount(self.worker_fee_per_token, "worker_fee_per_token")
        if self.worker_fee_per_token > self.price_per_token:
            raise BillingError(
                f"worker_fee_per_token ({self.worker_fee_per_token}) exceeds price_per_token "
                f"({self.price_per_token}): the commission would be negative"
            )
        for name in ("prompt_bps", "cached_bps", "completion_bps", "reasoning_bps"):
            _check_factor(getattr(self, name), name)
        _check_factor(self.default_coefficient, "default_coefficient")
        for worker, coefficient in self.worker_coefficients.items():
            _check_factor(coefficient, f"coefficient of {worker}")

    def coefficient_of(self, worker_id: str) -> int:
        return self.worker_coefficients.get(worker_id, self.default_coefficient)

    @property
    def max_bps(self) -> int:
        return max(self.prompt_bps, self.cached_bps, self.completion_bps, self.reasoning_bps)


def _check_factor(value: object, what: str) -> None:
    value = check_count(value, what)
    # 2^32 as in COCOON's u32 fields; keeps every product far inside Python's exact ints and
    # the results inside int64 for realistic token counts.
    if value >= 2**32:
        raise BillingError(f"{what} must fit in u32, got {value}")


def scaled_adjusted_tokens(usage: Usage, prices: Prices, coefficient: int) -> int:
    """Adjusted tokens x 10^7, exact: sum over categories of tokens x coefficient x bps."""
    _check_factor(coefficient, "coefficient")
    weighted = (
        (usage.prompt - usage.cached) * prices.prompt_bps
        + usage.cached * prices.cached_bps
        + (usage.completion - usage.reasoning) * prices.completion_bps
        + usage.reasoning * prices.reasoning_bps
    )
    return weighted * coefficient


def cost(usage: Usage, prices: Prices, coefficient: int) -> Cost:
    """The charge, fee and commission of `usage` at `coefficient`, each rounded down once."""
    scaled = scaled_adjusted_tokens(usage, prices, coefficient)
    charge = check_amount(scaled * prices.price_per_token // _SCALE, "charge")
    fee = scaled * prices.worker_fee_per_token // _SCALE
    return Cost(charge, fee, charge - fee, scaled)


def max_cost(max_tokens: int, prompt_size: int, prices: Prices, max_coefficient: int) -> int:
    """The hold: every token the request may bill at the dearest multiplier and the client's cap.

    COCOON reserves `(max_tokens + query_bytes) x max_coefficient/1000` adjusted tokens and
    ignores the multipliers, so a completion multiplier above 1.0x can exceed the reservation.
    We multiply by the largest multiplier and round up, so any usage with completion <= max_tokens,
    prompt <= prompt_size and coefficient <= max_coefficient costs at most the hold.
    """
    check_count(max_tokens, "max_tokens")
    check_count(prompt_size, "prompt size")
    _check_factor(max_coefficient, "max_coefficient")
    amount = max_hold_nanoton(
        max_tokens, prompt_size, prices.price_per_token, prices.max_bps, max_coefficient
    )
    return check_amount(amount, "hold amount")


def cocoon_adjusted_tokens(usage: Usage, prices: Prices, coefficient: int) -> int:
    """COCOON's own integer adjusted-token count (truncated per category), for comparison only."""

    def adjust(n: int, mult: int) -> int:
        return n * coefficient * mult // _SCALE

    return (
        adjust(usage.prompt - usage.cached, prices.prompt_bps)
        + adjust(usage.cached, prices.cached_bps)
        + adjust(usage.completion - usage.reasoning, prices.completion_bps)
        + adjust(usage.reasoning, prices.reasoning_bps)
    )
