"""The gateway's side of admission grants: carving holds exactly as billing does."""

from __future__ import annotations

from cocoon.core.holds import max_hold_nanoton
from cocoon.gateway.admission import AdmissionGrants

HOLD = max_hold_nanoton(100, 400, 100, 10_000, 1000)  # 50,000


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


def granted(grant_id: str, amount: int, until: int, gateway: str = "gw-1", status="GRANTED"):
    return {
        "grant_id": grant_id,
        "account_id": "alice",
        "gateway_id": gateway,
        "status": status,
        "amount_nanoton": amount,
        "price_per_token": 100,
        "max_bps": 10_000,
        "asked_by": "r-0",
        "usable_until": until,
        "decided_at": 0,
    }


def admit(grants: AdmissionGrants):
    return grants.admit("alice", max_tokens=100, prompt_size=400, max_coefficient=1000)


def test_without_a_grant_the_request_goes_to_billing_and_asks_once():
    clock = Clock()
    grants = AdmissionGrants("gw-1", ask_requests=4, clock=clock)
    first = admit(grants)
    assert (first.grant_id, first.ask_requests, first.return_grant_id) == (None, 4, None)
    assert admit(grants).ask_requests == 0  # the ask is outstanding
    clock.ms += 5_000
    assert admit(grants).ask_requests == 4  # no answer came: ask again


def test_a_grant_funds_requests_exactly_until_it_runs_out_then_goes_back():
    clock = Clock()
    grants = AdmissionGrants("gw-1", ask_requests=4, refill_below_requests=1, clock=clock)
    admit(grants)
    grants.on_record(granted("g-other", 10 * HOLD, clock.ms + 30_000, gateway="gw-2"))
    grants.on_record(granted("g-1", 2 * HOLD + HOLD // 2, clock.ms + 30_000))
    one, two = admit(grants), admit(grants)
    assert (one.grant_id, two.grant_id) == ("g-1", "g-1")
    assert grants.remaining("alice") == HOLD // 2
    assert two.ask_requests == 4  # less than one more request's worth left: refill
    # Half a hold left cannot fund the next one: it goes to billing and returns the grant.
    third = admit(grants)
    assert (third.grant_id, third.return_grant_id) == (None, "g-1")
    assert grants.remaining("alice") == 0


def test_a_newer_grant_funds_what_the_older_one_cannot_and_the_older_is_returned():
    clock = Clock()
    grants = AdmissionGrants("gw-1", clock=clock)
    grants.on_record(granted("g-1", HOLD // 2, clock.ms + 30_000))
    grants.on_record(granted("g-2", 3 * HOLD, clock.ms + 30_000))
    a = admit(grants)
    assert (a.grant_id, a.return_grant_id) == ("g-2", "g-1")
    assert grants.remaining("alice") == 2 * HOLD


def test_a_grant_is_not_used_near_its_end_closed_or_after_a_refusal():
    clock = Clock()
    grants = AdmissionGrants("gw-1", margin_ms=1_000, ask_timeout_ms=5_000, clock=clock)
    grants.on_record(granted("g-1", 10 * HOLD, clock.ms + 1_500))
    assert admit(grants).grant_id == "g-1"
    clock.ms += 600  # 900 ms before billing's end: inside the margin
    assert admit(grants).grant_id is None
    grants.on_record(granted("g-2", 10 * HOLD, clock.ms + 30_000))
    grants.on_record(granted("g-2", 10 * HOLD, clock.ms + 30_000, status="CLOSED"))
    assert admit(grants).grant_id is None
    grants.on_record(granted("g-3", 0, clock.ms, status="REFUSED"))
    assert admit(grants).ask_requests == 0  # refused: no new ask for a while


def test_accounts_with_nothing_usable_are_forgotten():
    clock = Clock()
    grants = AdmissionGrants("gw-1", ask_timeout_ms=5_000, clock=clock)
    for n in range(1023):
        grants.admit(f"acct-{n}", max_tokens=1, prompt_size=1, max_coefficient=1000)
    grants.on_record({**granted("g-1", 10 * HOLD, clock.ms + 60_000), "account_id": "keep"})
    assert grants.tracked_accounts() == 1024
    clock.ms += 5_000  # every ask timed out; only "keep" has a usable grant
    grants.admit("acct-new", max_tokens=1, prompt_size=1, max_coefficient=1000)  # the 1024th
    assert grants.tracked_accounts() == 2  # "keep" and the one just admitted
    assert grants.remaining("keep") == 10 * HOLD
