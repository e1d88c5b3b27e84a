"""Admission grants in the engine: funds held ahead for a gateway, holds carved out of them,
the remainder returned, all exact and rebuilt identically from the entries."""

from __future__ import annotations

import pytest
from billing_support import PRICES, Workers, engine_with

from cocoon.billing.audit import audit
from cocoon.billing.engine import BillingEngine
from cocoon.billing.money import GrantError, InsufficientFundsError
from cocoon.billing.pricing import Prices, Usage, max_cost
from cocoon.core.holds import max_hold_nanoton

ACCOUNT = "acct-1"


@pytest.fixture
def workers() -> Workers:
    w = Workers()
    w.add("w1")
    return w


@pytest.fixture
def engine(workers: Workers) -> BillingEngine:
    e = engine_with(workers)
    e.open_account(ACCOUNT)
    e.credit_deposit("100:aa", 1_000_000, ACCOUNT)
    return e


def grant(engine: BillingEngine, grant_id: str = "g-1", amount: int = 30_000):
    return engine.open_grant(
        grant_id, ACCOUNT, gateway_id="gw-1", amount=amount, usable_until_ms=60_000
    )


def granted_hold(engine: BillingEngine, rid: str, grant_id: str = "g-1", max_tokens: int = 100):
    return engine.open_hold(
        rid,
        ACCOUNT,
        max_tokens=max_tokens,
        prompt_size=50,
        max_coefficient=2000,
        expires_at_ms=10_000,
        grant_id=grant_id,
    )


def test_the_gateway_formula_is_billings(engine):
    # The gateway computes holds with cocoon.core.holds; billing with pricing.max_cost.
    dear = Prices(price_per_token=7, worker_fee_per_token=3, completion_bps=12_345)
    for tokens, prompt, coefficient in [(100, 50, 2000), (1, 0, 1), (4096, 32_000, 4000)]:
        for prices in (PRICES, dear):
            assert max_cost(tokens, prompt, prices, coefficient) == max_hold_nanoton(
                tokens, prompt, prices.price_per_token, prices.max_bps, coefficient
            )


def test_a_grant_holds_funds_and_holds_are_carved_out_of_it(engine, workers):
    g = grant(engine)
    assert engine.available(ACCOUNT) == 970_000 and engine.held(ACCOUNT) == 30_000
    h = granted_hold(engine, "r-1")
    assert h.amount == 6000 and h.grant_id == "g-1"
    # Carving moves no money: it was held already.
    assert engine.available(ACCOUNT) == 970_000 and engine.held(ACCOUNT) == 30_000
    assert g.remaining == 24_000
    result = engine.capture(workers.receipt("r-1", "w1", Usage(10, 0, 20, 0)))
    assert result.status == "captured"
    charge = result.cost.charge
    # The unused part of the request's hold goes back to the balance, the grant keeps its rest.
    assert engine.available(ACCOUNT) == 970_000 + 6000 - charge
    assert engine.held(ACCOUNT) == 24_000
    assert engine.close_grant("g-1", reason="expired") == 24_000
    assert engine.available(ACCOUNT) == 1_000_000 - charge
    assert engine.held(ACCOUNT) == 0
    assert audit(engine.ledger, require_no_open_holds=True) == []


def test_a_grant_cannot_be_overdrawn_or_used_by_another_account(engine):
    grant(engine, amount=10_000)
    granted_hold(engine, "r-1")
    with pytest.raises(GrantError, match="4000 nanoTON left"):
        granted_hold(engine, "r-2")
    engine.open_account("acct-2")
    engine.credit_deposit("101:bb", 1_000_000, "acct-2")
    with pytest.raises(GrantError, match="no open grant"):
        engine.open_hold(
            "r-3",
            "acct-2",
            max_tokens=1,
            prompt_size=1,
            max_coefficient=1000,
            expires_at_ms=10_000,
            grant_id="g-1",
        )
    with pytest.raises(GrantError, match="no open grant"):
        granted_hold(engine, "r-4", grant_id="g-never")
    assert engine.hold("r-2") is None and engine.hold("r-3") is None
    assert audit(engine.ledger) == []


def test_a_grant_needs_the_funds_and_a_closed_grant_funds_nothing(engine):
    with pytest.raises(InsufficientFundsError):
        grant(engine, amount=1_000_001)
    grant(engine)
    assert grant(engine) is engine.grant("g-1")  # idempotent while open
    engine.close_grant("g-1")
    assert engine.close_grant("g-1") is None  # once
    with pytest.raises(GrantError, match="already closed"):
        grant(engine)
    with pytest.raises(GrantError):
        granted_hold(engine, "r-1")
    assert engine.available(ACCOUNT) == 1_000_000


def test_grants_are_priced_when_given(engine, workers):
    grant(engine)
    engine.prices = Prices(price_per_token=200, worker_fee_per_token=80)
    h = granted_hold(engine, "r-1")
    assert h.amount == 6000  # the grant's price list, not the new one
    assert h.prices.price_per_token == PRICES.price_per_token


def test_replay_rebuilds_grants_exactly(engine, workers):
    grant(engine)
    granted_hold(engine, "r-1")
    granted_hold(engine, "r-2")
    engine.capture(workers.receipt("r-2", "w1", Usage(3, 0, 4, 0)))
    again = BillingEngine.replay(list(engine.ledger), PRICES, workers.verifier())
    assert again.grant("g-1") == engine.grant("g-1")
    assert again.grant("g-1").remaining == 18_000
    assert again.hold("r-1") == engine.hold("r-1")
    assert again.ledger.balances() == engine.ledger.balances()


def test_the_audit_catches_a_grant_overdrawn_or_closed_with_the_wrong_rest(engine):
    from dataclasses import replace

    grant(engine, amount=10_000)
    granted_hold(engine, "r-1")
    engine.close_grant("g-1")
    entries = list(engine.ledger)
    assert audit(entries) == []
    closing = entries[-1]
    wrong = replace(closing, meta={**closing.meta, "returned": 5_000})
    assert any("4000 was left" in p for p in audit([*entries[:-1], wrong]))
    hold_entry = next(e for e in entries if e.entry_id == "hold:r-1")
    big = replace(hold_entry, meta={**hold_entry.meta, "amount": 20_000})
    problems = audit([e if e is not hold_entry else big for e in entries])
    assert any("overdraws grant g-1" in p for p in problems)
