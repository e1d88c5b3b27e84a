"""The hold formula: the one piece of pricing both billing and the gateway compute.

Billing holds a request's maximum cost; with an admission grant (docs/billing-service.md) the
gateway carves the same amount out of the grant itself, so both sides must get the same integer
from the same inputs. The inputs are validated by the callers (billing's `pricing.max_cost`).
"""

from __future__ import annotations

COEFFICIENT_ONE = 1000  # a worker price coefficient of 1.0x, as COCOON
BPS_ONE = 10_000  # a per-category multiplier of 1.0x
SCALE = COEFFICIENT_ONE * BPS_ONE


def max_hold_nanoton(
    max_tokens: int, prompt_size: int, price_per_token: int, max_bps: int, max_coefficient: int
) -> int:
    """Every token the request may bill, at the dearest multiplier and the client's coefficient
    cap, rounded up to whole nanoTON."""
    scaled = (max_tokens + prompt_size) * max_bps * max_coefficient * price_per_token
    return -(-scaled // SCALE)
