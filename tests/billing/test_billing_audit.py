"""Exact-money invariants: the audit finds tampering, and random histories never break them."""

from __future__ import annotations

import json

from billing_support import PRICES, Workers, engine_with
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cocoon.billing.audit import audit
from cocoon.billing.engine import BillingEngine
from cocoon.billing.ledger import Entry
from cocoon.billing.money import BillingError, GrantError, InsufficientFundsError
from cocoon.billing.pricing import Usage


def small_history() -> BillingEngine:
    workers = Workers()
    workers.add("w1")
    engine = engine_with(workers)
    engine.open_account("a")
    engine.credit_deposit("1:aa", 10_000, "a")
    engine.open_hold("r1", "a", max_tokens=10, prompt_size=10, max_coefficient=1000,
                     expires_at_ms=5)  # fmt: skip
    engine.capture(workers.receipt("r1", "w1", Usage(5, 0, 5, 0)))
    engine.open_hold("r2", "a", max_tokens=10, prompt_size=10, max_coefficient=1000,
                     expires_at_ms=5)  # fmt: skip
    return engine


def test_a_clean_history_passes_and_an_open_hold_is_reported_when_asked():
    engine = small_history()
    assert audit(engine.ledger) == []
    [problem] = audit(engine.ledger, require_no_open_holds=True)
    assert "1 hold(s) left open" in problem


def test_tampered_entries_are_found():
    entries = small_history().ledger.entries
    charge = next(e for e in entries if e.kind == "charge")
    # Same postings, but the recorded fee claims the worker earned more than it was credited.
    lying = Entry(charge.entry_id, "charge", charge.postings, 0,
                  {**charge.meta, "worker_fee": charge.meta["worker_fee"] + 1})  # fmt: skip
    problems = audit([lying if e is charge else e for e in entries])
    assert any("charge != worker fee + commission" in p for p in problems)
    assert any("worker:w1" in p for p in problems)
    # A deposit credited to another client than its facts say.
    dep = entries[1]
    moved = Entry(dep.entry_id, "deposit", (("ton:deposits", -10_000), ("client:zz", 10_000)),
                  0, dep.meta)  # fmt: skip
    assert any("client:zz" in p for p in audit([moved if e is dep else e for e in entries]))
    # A replayed entry smuggled in twice.
    assert any("appears twice" in p for p in audit([*entries, entries[1]]))


class Billing(RuleBasedStateMachine):
    """Random deposits, holds, receipts (good, replayed, bad), expiries and payouts."""

    def __init__(self) -> None:
        super().__init__()
        self.workers = Workers()
        for w in ("w1", "w2"):
            self.workers.add(w)
        self.engine = engine_with(self.workers)
        self.now = 0
        self.requests: list[str] = []
        self.receipts = []
        self.deposits = 0
        self.charged = 0
        self.payouts: list[str] = []
        self.grants: list[str] = []
        # (ledger length, engine state through JSON) taken at random moments: a restart.
        self.snapshots: list[tuple[int, dict]] = []
        for c in ("a", "b"):
            self.engine.open_account(c)

    @rule(client=st.sampled_from(["a", "b", "ghost"]), amount=st.integers(0, 50_000),
          tx=st.integers(0, 30))  # fmt: skip
    def deposit(self, client, amount, tx):
        if self.engine.credit_deposit(f"{tx}:{client}", amount, client):
            self.deposits += amount

    @rule(client=st.sampled_from(["a", "b"]), amount=st.integers(1, 50_000),
          payment=st.integers(0, 3))  # fmt: skip
    def stars_topup(self, client, amount, payment):
        """A Telegram Stars payment (once per payment id), refundable while unspent."""
        if self.engine.credit_topup(f"stars-{payment}", client, amount, "telegram_stars",
                                    paid_amount=amount // 100, reference=str(payment)):  # fmt: skip
            self.deposits += amount

    @rule(client=st.sampled_from(["a", "b"]), payment=st.integers(0, 3))
    def refund(self, client, payment):
        """A refund ask, maybe repeated (answered the same, debited once) or for another
        client's payment (refused); restarts from snapshots must keep both answers."""
        entries = len(self.engine.ledger)
        decision = self.engine.refund_topup(f"stars-{payment}", client)
        if len(self.engine.ledger) > entries:
            assert decision.debited
            self.deposits -= decision.topup.amount
        # A takeover right now answers the ask again the same way, moving nothing.
        state = json.loads(json.dumps(self.engine.state()))
        restored = BillingEngine.restore(state, [], PRICES, self.workers.verifier())
        assert restored.refund_topup(f"stars-{payment}", client) == decision
        assert len(restored.ledger) == len(self.engine.ledger)

    @rule(client=st.sampled_from(["a", "b"]), max_tokens=st.integers(0, 500),
          prompt=st.integers(0, 300), cap=st.integers(1000, 3000),
          ttl=st.integers(1, 100))  # fmt: skip
    def open_hold(self, client, max_tokens, prompt, cap, ttl):
        rid = f"r{len(self.requests)}"
        try:
            self.engine.open_hold(rid, client, max_tokens=max_tokens, prompt_size=prompt,
                                  max_coefficient=cap, expires_at_ms=self.now + ttl)  # fmt: skip
        except InsufficientFundsError as exc:
            assert exc.shortfall == exc.needed - self.engine.available(client) > 0
            return
        self.requests.append(rid)

    @rule(client=st.sampled_from(["a", "b"]), amount=st.integers(1, 20_000))
    def open_grant(self, client, amount):
        gid = f"g{len(self.grants)}"
        try:
            self.engine.open_grant(gid, client, gateway_id="gw", amount=amount,
                                   usable_until_ms=self.now + 50)  # fmt: skip
        except InsufficientFundsError:
            return
        self.grants.append(gid)

    @precondition(lambda self: self.grants)
    @rule(data=st.data(), max_tokens=st.integers(0, 200), prompt=st.integers(0, 100))
    def hold_from_grant(self, data, max_tokens, prompt):
        gid = data.draw(st.sampled_from(self.grants))
        grant = self.engine.grant(gid)
        if grant is None:
            return
        rid = f"r{len(self.requests)}"
        try:
            self.engine.open_hold(rid, grant.client_id, max_tokens=max_tokens, prompt_size=prompt,
                                  max_coefficient=1000, expires_at_ms=self.now + 20,
                                  grant_id=gid)  # fmt: skip
        except GrantError:
            return
        self.requests.append(rid)

    @precondition(lambda self: self.grants)
    @rule(data=st.data())
    def close_grant(self, data):
        self.engine.close_grant(data.draw(st.sampled_from(self.grants)), self.now)

    @rule()
    def snapshot(self):
        """Take a snapshot, and check that a restart from each earlier one plus the entries
        since lands where the engine is now (open holds and grants included)."""
        self._check_restarts()
        state = json.loads(json.dumps(self.engine.state()))
        self.snapshots.append((len(self.engine.ledger), state))

    def _check_restarts(self) -> None:
        entries, now = self.engine.ledger.entries, self.engine.state()
        for count, state in self.snapshots:
            restored = BillingEngine.restore(
                state, entries[count:], PRICES, self.workers.verifier()
            )
            assert restored.state() == now
            assert restored.rejections() == self.engine.rejections()
            assert restored.open_holds() == self.engine.open_holds()

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), worker=st.sampled_from(["w1", "w2"]),
          prompt=st.integers(0, 400), completion=st.integers(0, 600),
          coefficient=st.sampled_from([1000, 1500, 2500, 4000]))  # fmt: skip
    def receipt(self, data, worker, prompt, completion, coefficient):
        rid = data.draw(st.sampled_from([*self.requests, "unknown-request"]))
        cached = data.draw(st.integers(0, prompt))
        reasoning = data.draw(st.integers(0, completion))
        r = self.workers.receipt(rid, worker, Usage(prompt, cached, completion, reasoning),
                                 coefficient=coefficient)  # fmt: skip
        self._capture(r)
        self.receipts.append(r)

    @precondition(lambda self: self.receipts)
    @rule(data=st.data())
    def replay_receipt(self, data):
        self._capture(data.draw(st.sampled_from(self.receipts)))

    def _capture(self, r):
        result = self.engine.capture(r, at_ms=self.now)
        if result.status == "captured":
            self.charged += result.cost.charge

    @precondition(lambda self: len(self.engine.ledger) > 0)
    @rule(data=st.data())
    def replay_entry(self, data):
        entry = data.draw(st.sampled_from(self.engine.ledger.entries))
        assert self.engine.ledger.append(Entry.from_json(entry.to_json())) is False

    @rule(step=st.integers(0, 60))
    def time_passes(self, step):
        self.now += step
        self.engine.expire_holds(self.now)

    @rule(worker=st.sampled_from(["w1", "w2"]), outcome=st.sampled_from(["confirm", "reverse"]))
    def payout(self, worker, outcome):
        amount = self.engine.earnings(worker)
        if amount == 0:
            return
        pid = f"{worker}.{len(self.payouts)}"
        self.engine.start_payout(pid, worker, amount)
        self.payouts.append(pid)
        if outcome == "confirm":
            self.engine.confirm_payout(pid, tx="t")
            try:
                self.engine.reverse_payout(pid)
                raise AssertionError("a confirmed payout was reversed")
            except BillingError:
                pass
        else:
            self.engine.reverse_payout(pid)

    @invariant()
    def money_is_exact(self):
        assert audit(self.engine.ledger) == []
        e = self.engine
        in_clients = sum(e.available(c) + e.held(c) for c in ("a", "b"))
        unclaimed = e.ledger.balance("unclaimed")
        assert in_clients + unclaimed == self.deposits - self.charged
        earned = sum(e.earnings(w) for w in ("w1", "w2"))
        paid = e.ledger.balance("ton:payouts") + e.ledger.balance("payouts:pending")
        assert earned + paid + e.ledger.balance("network:commission") == self.charged

    def teardown(self):
        self.engine.expire_holds(self.now + 10**9)
        for grant in self.engine.open_grants():
            self.engine.close_grant(grant.grant_id, self.now)
        assert audit(self.engine.ledger, require_no_open_holds=True) == []
        rebuilt = BillingEngine.replay(self.engine.ledger, PRICES, self.workers.verifier())
        assert rebuilt.ledger.balances() == self.engine.ledger.balances()
        # A restart from any snapshot plus the entries after it is the same engine as a full
        # replay: balances, holds, grants, settled requests, rejections, earnings, payouts.
        assert rebuilt.state() == self.engine.state()
        self._check_restarts()


Billing.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_billing_state_machine = Billing.TestCase
