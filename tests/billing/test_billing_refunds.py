"""Refunds of paid top-ups in the engine: whole, once, only while unspent, replayed the same."""

from __future__ import annotations

import json

from billing_support import Workers, engine_with

from cocoon.billing.audit import audit
from cocoon.billing.engine import BillingEngine


def paid_engine() -> BillingEngine:
    engine = engine_with(Workers())
    engine.credit_topup("stars-a", "tg-1", 50_000, "telegram_stars", paid_amount=50, reference="a")
    engine.credit_topup("trial-tg-1", "tg-1", 1_000, "trial")
    return engine


def test_a_payment_held_for_an_answer_is_not_refunded_until_the_hold_is_released():
    engine = paid_engine()
    engine.open_hold(
        "r-1", "tg-1", max_tokens=1_000, prompt_size=500, max_coefficient=1000, expires_at_ms=10
    )
    held = engine.held("tg-1")
    assert held > 1_000  # more than the trial: the hold draws on the paid credit
    refused = engine.refund_topup("stars-a", "tg-1")
    assert not refused.debited and refused.topup is None
    assert f"holds {51_000 - held} of the 50000" in refused.reason
    assert "refund:stars-a" not in engine.ledger
    engine.release_hold("r-1")
    debited = engine.refund_topup("stars-a", "tg-1")
    assert debited.debited and debited.topup is not None and debited.topup.reference == "a"
    assert engine.available("tg-1") == 1_000
    assert audit(engine.ledger.entries) == []


def test_refunds_are_whole_once_and_survive_a_replay():
    engine = paid_engine()
    assert engine.refund_topup("stars-a", "tg-1").debited
    assert engine.refund_topup("stars-a", "tg-1").debited  # asked again: the same answer
    assert engine.available("tg-1") == 1_000
    assert [e.entry_id for e in engine.ledger.entries if e.kind == "refund"] == ["refund:stars-a"]
    assert not engine.refund_topup("trial-tg-1", "tg-1").debited  # a trial is not money paid
    assert not engine.refund_topup("stars-a", "tg-2").debited  # not another account's
    replayed = BillingEngine.replay(engine.ledger.entries, engine.prices, lambda _r: True)
    again = replayed.refund_topup("stars-a", "tg-1")
    assert again.debited and replayed.available("tg-1") == 1_000
    assert len(replayed.ledger) == len(engine.ledger)


def test_the_audit_catches_a_refund_that_moves_other_money():
    engine = paid_engine()
    engine.refund_topup("stars-a", "tg-1")
    entries = engine.ledger.entries
    forged = next(e for e in entries if e.kind == "refund")
    tampered = forged.meta | {"amount": 40_000}
    entries[entries.index(forged)] = type(forged)(
        forged.entry_id, forged.kind, forged.postings, forged.at_ms, tampered
    )
    assert any("refund" in p or "topups:telegram_stars" in p for p in audit(entries))


def restored_from(engine: BillingEngine, state: dict, after: int) -> BillingEngine:
    """A takeover: `state` (through the JSON a snapshot is) plus the entries after `after`."""
    state = json.loads(json.dumps(state))
    tail = engine.ledger.entries[after:]
    return BillingEngine.restore(state, tail, engine.prices, lambda _r: True)


def test_a_refund_after_a_takeover_is_answered_as_before_it():
    engine = paid_engine()
    engine.credit_topup("stars-b", "tg-1", 20_000, "telegram_stars", paid_amount=20, reference="b")
    before_refund, count = engine.state(), len(engine.ledger)
    first = engine.refund_topup("stars-a", "tg-1")
    assert first.debited
    # From a snapshot taken after the refund, and from one before it plus the refund entry.
    for restored in (
        restored_from(engine, engine.state(), len(engine.ledger)),
        restored_from(engine, before_refund, count),
    ):
        assert restored.state() == engine.state()
        assert restored.refund_topup("stars-a", "tg-1") == first  # the same answer, no debit
        assert len(restored.ledger) == len(engine.ledger)
        assert not restored.refund_topup("trial-tg-1", "tg-1").debited
        # The payment not refunded yet is still refundable, once.
        second = restored.refund_topup("stars-b", "tg-1")
        assert second.debited and second.topup is not None and second.topup.reference == "b"
        assert restored.available("tg-1") == 1_000
