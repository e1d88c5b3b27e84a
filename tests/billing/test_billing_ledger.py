"""The double-entry ledger: balance, idempotency, validation, replay."""

from __future__ import annotations

import pytest

from cocoon.billing.ledger import Entry, Ledger, LedgerConflictError
from cocoon.billing.money import INT64_MAX, AmountError, BillingError


def deposit(n: int, amount: int, to: str = "client:a") -> Entry:
    return Entry(f"deposit:{n}", "deposit", (("ton:deposits", -amount), (to, amount)))


def test_duplicate_entry_is_a_no_op_and_balances_do_not_move():
    ledger = Ledger()
    assert ledger.append(deposit(1, 500)) is True
    assert ledger.append(deposit(1, 500)) is False
    assert ledger.balance("client:a") == 500
    assert len(ledger) == 1


def test_same_id_with_other_content_is_refused():
    ledger = Ledger()
    ledger.append(deposit(1, 500))
    with pytest.raises(LedgerConflictError):
        ledger.append(deposit(1, 501))
    assert ledger.balance("client:a") == 500


def test_unbalanced_or_malformed_entries_are_refused():
    with pytest.raises(AmountError, match="do not balance"):
        Entry("x", "deposit", (("ton:deposits", -5), ("client:a", 4)))
    with pytest.raises(AmountError, match="not an integer"):
        Entry("x", "deposit", (("ton:deposits", -5.0), ("client:a", 5.0)))
    with pytest.raises(AmountError, match="int64"):
        Entry("x", "deposit", (("ton:deposits", -(2**63)), ("client:a", 2**63)))
    with pytest.raises(AmountError, match="posted twice"):
        Entry("x", "deposit", (("client:a", -5), ("client:a", 5)))
    with pytest.raises(BillingError, match="unknown account"):
        Entry("x", "deposit", (("ton:deposits", -5), ("bank:a", 5)))


def test_no_account_but_the_deposit_source_may_go_negative():
    ledger = Ledger()
    ledger.append(deposit(1, 10))
    with pytest.raises(AmountError, match="negative"):
        ledger.append(Entry("spend", "charge", (("client:a", -11), ("network:commission", 11))))
    assert ledger.balance("client:a") == 10


def test_balances_cannot_overflow_int64():
    ledger = Ledger()
    ledger.append(deposit(1, INT64_MAX))
    with pytest.raises(AmountError, match="overflow"):
        ledger.append(deposit(2, 1))
    assert ledger.balance("client:a") == INT64_MAX


def test_replay_rebuilds_exactly_including_through_json():
    ledger = Ledger()
    for i in range(20):
        ledger.append(deposit(i, 1000 + i, to=f"client:c{i % 3}"))
    ledger.append(Entry("move", "charge", (("client:c0", -7), ("network:commission", 7))))
    again = Ledger.replay(Entry.from_json(e.to_json()) for e in ledger)
    assert again.balances() == ledger.balances()
    assert [e.entry_id for e in again] == [e.entry_id for e in ledger]


@pytest.mark.parametrize("restored", [False, True])
def test_a_snapshot_keeps_idempotence_and_conflicts_exact(restored):
    """`state()` keeps a fingerprint in place of each remembered entry (and a restored ledger
    has only those): a replay is still a no-op and another entry under the id still refused."""
    ledger = Ledger(keep_entries=False)
    ledger.append(deposit(1, 500))
    state = ledger.state()
    assert ledger.state() == state  # taking it again changes nothing
    if restored:
        ledger = Ledger.restored(state)
    assert ledger.append(deposit(1, 500)) is False
    with pytest.raises(LedgerConflictError):
        ledger.append(deposit(1, 501))
    assert ledger.append(deposit(2, 7)) is True
    assert (ledger.balance("client:a"), len(ledger)) == (507, 2)
