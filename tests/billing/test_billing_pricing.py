"""Pricing arithmetic: integer nanoTON, explicit rounding, COCOON's formulas."""

from __future__ import annotations

import pytest

from cocoon.billing.money import INT64_MAX, AmountError, BillingError
from cocoon.billing.pricing import (
    Prices,
    Usage,
    cocoon_adjusted_tokens,
    cost,
    max_cost,
)

# COCOON's fake-ton defaults: price 2, worker fee 1 nanoTON per adjusted token.
FAKE_TON = Prices(price_per_token=2, worker_fee_per_token=1)


def test_cocoon_formula_at_unit_multipliers_and_coefficient():
    usage = Usage(prompt=100, cached=30, completion=50, reasoning=10)
    c = cost(usage, FAKE_TON, 1000)
    # 150 adjusted tokens: client pays 150 x 2, worker earns 150 x 1, network keeps the rest.
    assert cocoon_adjusted_tokens(usage, FAKE_TON, 1000) == 150
    assert (c.charge, c.worker_fee, c.commission) == (300, 150, 150)


def test_multipliers_and_coefficient_per_category():
    prices = Prices(
        price_per_token=1000,
        worker_fee_per_token=600,
        prompt_bps=10_000,
        cached_bps=2_500,  # cached prompt at 0.25x
        completion_bps=30_000,  # completion at 3x
        reasoning_bps=20_000,
    )
    usage = Usage(prompt=1000, cached=400, completion=200, reasoning=50)
    # coefficient 1.5x: (600x1 + 400x0.25 + 150x3 + 50x2) x 1.5 = 1875 adjusted tokens
    c = cost(usage, prices, 1500)
    assert c.charge == 1_875_000
    assert c.worker_fee == 1_125_000
    assert c.commission == 750_000
    assert cocoon_adjusted_tokens(usage, prices, 1500) == 1875


def test_rounding_is_once_and_down_not_per_bucket_like_cocoon():
    prices = Prices(price_per_token=1000, worker_fee_per_token=700)
    usage = Usage(prompt=1, cached=1, completion=1, reasoning=1)  # two buckets of one token
    # At 1.5x COCOON truncates each bucket: 1.5 -> 1, 1.5 -> 1, so 2 adjusted tokens.
    assert cocoon_adjusted_tokens(usage, prices, 1500) == 2
    # We keep the exact 3.0 adjusted tokens and round down once, in nanoTON.
    c = cost(usage, prices, 1500)
    assert (c.charge, c.worker_fee, c.commission) == (3000, 2100, 900)
    odd = cost(Usage(prompt=1, cached=0, completion=0, reasoning=0), Prices(3, 1), 1333)
    # 1.333 adjusted tokens x 3 = 3.999 -> 3 ; fee 1.333 -> 1 ; commission 2
    assert (odd.charge, odd.worker_fee, odd.commission) == (3, 1, 2)


def test_cocoon_reservation_formula_and_our_multiplier_fix():
    # COCOON: (max_tokens + query_bytes) x max_coefficient/1000 adjusted tokens.
    assert max_cost(1000, 412, FAKE_TON, 4000) == (1000 + 412) * 4 * 2
    # With a 3x completion multiplier COCOON's reservation would be exceeded; ours is not.
    dear = Prices(price_per_token=2, worker_fee_per_token=1, completion_bps=30_000)
    hold = max_cost(100, 10, dear, 1000)
    assert hold == 110 * 3 * 2
    worst = cost(Usage(prompt=10, cached=0, completion=100, reasoning=0), dear, 1000)
    assert worst.charge <= hold


def test_hold_rounds_up_so_it_always_covers_the_charge():
    prices = Prices(price_per_token=3, worker_fee_per_token=1)
    hold = max_cost(1, 0, prices, 1333)  # 3.999 -> 4
    assert hold == 4
    assert cost(Usage(0, 0, 1, 0), prices, 1333).charge <= hold


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"price_per_token": -1, "worker_fee_per_token": 0}, "negative"),
        ({"price_per_token": 1.5, "worker_fee_per_token": 0}, "integer"),
        ({"price_per_token": 2**63, "worker_fee_per_token": 0}, "int64"),
        ({"price_per_token": 1, "worker_fee_per_token": 2}, "commission would be negative"),
        ({"price_per_token": 1, "worker_fee_per_token": 0, "prompt_bps": 2**32}, "u32"),
    ],
)
def test_bad_prices_are_refused_with_a_clear_error(kwargs, message):
    with pytest.raises(BillingError, match=message):
        Prices(**kwargs)


def test_bad_usage_is_refused():
    with pytest.raises(BillingError, match="cached tokens"):
        Usage(prompt=1, cached=2, completion=0, reasoning=0)
    with pytest.raises(BillingError, match="reasoning tokens"):
        Usage(prompt=0, cached=0, completion=1, reasoning=2)
    with pytest.raises(BillingError, match="negative"):
        Usage(prompt=-1, cached=0, completion=0, reasoning=0)


def test_a_cost_beyond_int64_is_an_error_not_a_wraparound():
    prices = Prices(price_per_token=10**9, worker_fee_per_token=0)
    with pytest.raises(AmountError, match="int64"):
        max_cost(INT64_MAX // 10, 0, prices, 1000)
