"""Holds, receipt capture, expiry and rejections, with real Ed25519 receipts."""

from __future__ import annotations

import pytest
from billing_support import PRICES, Workers, engine_with

from cocoon.billing.audit import audit
from cocoon.billing.engine import BillingEngine
from cocoon.billing.journal import FileJournal
from cocoon.billing.money import (
    AmountError,
    BillingError,
    InsufficientFundsError,
    UnknownAccountError,
)
from cocoon.billing.pricing import Prices, Usage, max_cost
from cocoon.billing.receipts import Rejection

REQ = "6f1c2a9e-3b7d-4c1e-9a55-0d2f8e41b7c3"


@pytest.fixture
def workers() -> Workers:
    w = Workers()
    w.add("w1")
    w.add("w2")
    return w


@pytest.fixture
def engine(workers: Workers) -> BillingEngine:
    e = engine_with(workers)
    e.open_account("acct-1")
    e.credit_deposit("100:aa", 1_000_000, "acct-1")
    return e


def hold(engine: BillingEngine, rid: str = REQ, max_tokens: int = 100, **kw):
    args = {"prompt_size": 50, "max_coefficient": 2000, "expires_at_ms": 10_000, **kw}
    return engine.open_hold(rid, "acct-1", max_tokens=max_tokens, **args)


def test_hold_moves_max_cost_to_holds_and_refuses_with_exact_shortfall(engine):
    h = hold(engine)
    assert h.amount == max_cost(100, 50, PRICES, 2000) == 6000
    assert engine.available("acct-1") == 994_000
    assert engine.held("acct-1") == 6000
    with pytest.raises(InsufficientFundsError) as info:
        hold(engine, "r-big", max_tokens=100_000)
    needed = max_cost(100_000, 50, PRICES, 2000)
    assert info.value.shortfall == needed - 994_000
    assert str(needed - 994_000) in str(info.value)
    assert engine.available("acct-1") == 994_000  # refusal moved nothing


def test_same_request_holds_once(engine):
    assert hold(engine) == hold(engine)
    assert engine.held("acct-1") == 6000


def test_unknown_account_and_bad_input(engine):
    with pytest.raises(UnknownAccountError):
        engine.open_hold(REQ, "nobody", max_tokens=1, prompt_size=1, max_coefficient=1000,
                         expires_at_ms=1)  # fmt: skip
    with pytest.raises(BillingError, match="negative"):
        hold(engine, max_tokens=-5)
    with pytest.raises(AmountError, match="negative"):
        engine.credit_deposit("1:bb", -1, "acct-1")
    with pytest.raises(BillingError, match="request id"):
        hold(engine, "bad id with spaces")


def test_capture_charges_real_cost_credits_worker_and_commission_releases_rest(engine, workers):
    h = hold(engine)
    usage = Usage(prompt=40, cached=10, completion=60, reasoning=20)
    result = engine.capture(workers.receipt(REQ, "w1", usage, coefficient=1500))
    assert result.status == "captured"
    # 100 tokens x 1.5 = 150 adjusted: client 150 x 20, worker 150 x 15, network 150 x 5
    assert (result.cost.charge, result.cost.worker_fee, result.cost.commission) == (
        3000,
        2250,
        750,
    )
    assert result.released == h.amount - 3000
    assert engine.available("acct-1") == 1_000_000 - 3000
    assert engine.held("acct-1") == 0
    assert engine.earnings("w1") == 2250
    assert engine.ledger.balance("network:commission") == 750
    assert audit(engine.ledger, require_no_open_holds=True) == []


def test_replayed_receipt_is_a_no_op_and_a_second_receipt_is_rejected(engine, workers):
    hold(engine)
    first = workers.receipt(REQ, "w1", Usage(10, 0, 10, 0))
    assert engine.capture(first).status == "captured"
    assert engine.capture(first).status == "duplicate"
    other = workers.receipt(REQ, "w2", Usage(10, 0, 20, 0), attempt=2)
    result = engine.capture(other)
    assert (result.status, result.reason) == ("rejected", Rejection.DUPLICATE_REQUEST)
    assert engine.earnings("w2") == 0
    assert engine.available("acct-1") == 1_000_000 - 400
    [record] = engine.rejections("w2")
    assert record.attributable and record.reason is Rejection.DUPLICATE_REQUEST
    engine.capture(other)  # the same bad receipt again is recorded once
    assert len(engine.rejections("w2")) == 1


def test_receipt_for_unknown_request_is_rejected_never_charged(engine, workers):
    result = engine.capture(workers.receipt("no-such-request", "w1", Usage(1, 0, 1, 0)))
    assert (result.status, result.reason) == ("rejected", Rejection.UNKNOWN_REQUEST)
    assert engine.earnings("w1") == 0 and engine.available("acct-1") == 1_000_000


def test_tokens_beyond_the_hold_are_rejected(engine, workers):
    hold(engine, max_tokens=10)
    result = engine.capture(workers.receipt(REQ, "w1", Usage(5, 0, 11, 0)))
    assert result.reason is Rejection.TOKENS_BEYOND_HOLD
    result = engine.capture(workers.receipt(REQ, "w1", Usage(5, 0, 10, 0), coefficient=2001))
    assert result.reason is Rejection.COEFFICIENT_ABOVE_CAP
    assert engine.held("acct-1") == max_cost(10, 50, PRICES, 2000)
    assert engine.earnings("w1") == 0
    assert len(engine.rejections("w1")) == 2


def test_coefficient_must_match_the_registry_price(workers):
    prices = Prices(price_per_token=20, worker_fee_per_token=15, worker_coefficients={"w1": 1200})
    engine = engine_with(workers, prices)
    engine.open_account("acct-1")
    engine.credit_deposit("1:aa", 10**6, "acct-1")
    hold(engine)
    bad = engine.capture(workers.receipt(REQ, "w1", Usage(5, 0, 5, 0), coefficient=1000))
    assert bad.reason is Rejection.COEFFICIENT_MISMATCH
    assert engine.capture(workers.receipt(REQ, "w1", Usage(5, 0, 5, 0), coefficient=1200)).cost


def test_signature_must_be_the_current_verdict_key(engine, workers):
    hold(engine)
    forged = workers.receipt(REQ, "w1", Usage(1, 0, 1, 0), signer="w2")  # w2 signs as w1
    result = engine.capture(forged)
    assert result.reason is Rejection.BAD_SIGNATURE
    assert not engine.rejections("w1")[0].attributable  # forgeries do not hurt w1
    good = workers.receipt(REQ, "w1", Usage(1, 0, 1, 0))
    workers.add("w1")  # w1 re-attested with a new key: the old key is no longer current
    assert engine.capture(good).reason is Rejection.BAD_SIGNATURE
    assert engine.held("acct-1") > 0 and engine.earnings("w1") == 0


def test_holds_expire_by_themselves_and_late_receipts_are_rejected(engine, workers):
    hold(engine, expires_at_ms=5_000)
    hold(engine, "r-2", expires_at_ms=9_000)
    assert engine.expire_holds(4_999) == []
    assert engine.expire_holds(5_000) == [REQ]
    assert engine.held("acct-1") == 6000  # r-2 still open
    late = engine.capture(workers.receipt(REQ, "w1", Usage(1, 0, 1, 0)))
    assert late.reason is Rejection.HOLD_CLOSED
    assert engine.capture(workers.receipt("r-2", "w1", Usage(1, 0, 1, 0))).status == "captured"
    assert engine.expire_holds(10**12) == []
    assert engine.available("acct-1") == 1_000_000 - 40
    assert audit(engine.ledger, require_no_open_holds=True) == []


def test_unknown_deposit_comment_is_held_unclaimed_then_claimed(engine):
    assert engine.credit_deposit("7:cc", 5000, "ghost") is True
    assert engine.ledger.balance("unclaimed") == 5000
    engine.open_account("ghost")
    assert engine.credit_deposit("7:cc", 5000, "ghost") is False  # decided once
    engine.claim_unclaimed("7:cc", "ghost")
    engine.claim_unclaimed("7:cc", "ghost")
    assert engine.available("ghost") == 5000 and engine.ledger.balance("unclaimed") == 0
    assert audit(engine.ledger) == []


def test_engine_state_is_rebuilt_exactly_from_the_journal(tmp_path, workers):
    journal = FileJournal(tmp_path / "ledger.jsonl")
    engine = engine_with(workers, sink=journal)
    engine.open_account("acct-1")
    engine.credit_deposit("1:aa", 10**6, "acct-1")
    hold(engine)
    hold(engine, "r-2")
    engine.capture(workers.receipt("r-2", "w1", Usage(3, 0, 4, 0)))
    engine.capture(workers.receipt("unknown", "w2", Usage(3, 0, 4, 0)))
    journal.close()
    with open(tmp_path / "ledger.jsonl", "a") as f:
        f.write('{"id": "torn')  # a crash mid-write
    journal = FileJournal(tmp_path / "ledger.jsonl")
    again = BillingEngine.replay(journal.entries(), PRICES, workers.verifier(), sink=journal)
    assert again.ledger.balances() == engine.ledger.balances()
    assert again.hold(REQ) == engine.hold(REQ)
    assert again.rejections() == engine.rejections()
    # The rebuilt engine keeps going: the receipt for the still-open hold captures once.
    receipt = workers.receipt(REQ, "w1", Usage(1, 0, 1, 0))
    assert again.capture(receipt).status == "captured"
    assert again.capture(receipt).status == "duplicate"


def test_receipts_signed_by_the_core_crypto_module_verify_in_billing(engine):
    from cocoon.billing.receipts import (
        Ed25519ReceiptVerifier,
        canonical_message,
        receipt_from_record,
    )
    from cocoon.core.crypto.keys import WorkerKeys
    from cocoon.core.crypto.receipts import UsageReceipt, sign_receipt

    keys = WorkerKeys.generate()
    signed = sign_receipt(
        keys,
        UsageReceipt(f"{REQ}:1", REQ, 1, "w9", "m", 40, 10, 60, 20, 1000, True, 1, 2),
    )
    current = {"w9": keys.public.signing_key}
    verify = Ed25519ReceiptVerifier(current.get, canonical_message)
    receipt = receipt_from_record(signed.to_record())
    assert verify(receipt)
    tampered = receipt_from_record({**signed.to_record(), "completion_tokens": 59})
    assert not verify(tampered)
    with pytest.raises(BillingError, match="malformed"):
        receipt_from_record({"receipt_id": "x"})
