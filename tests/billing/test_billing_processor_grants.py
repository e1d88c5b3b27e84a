"""Billing's record handling for admission grants, without a broker: the fallback when a grant
cannot fund a request, receipts and placements that arrive before their request."""

from __future__ import annotations

import pytest
from billing_service_support import assignment, receipt, request

from cocoon.billing.pricing import Prices
from cocoon.billing.receipts import Ed25519ReceiptVerifier, canonical_message
from cocoon.billing.stream_handlers import GrantPolicy, Processor, ReceiptTooEarly, receipt_of
from cocoon.core.crypto.keys import WorkerKeys

PRICES = Prices(price_per_token=100, worker_fee_per_token=80, cached_bps=5000)
HOLD = 50_000  # max_tokens 100 + 400 prompt bytes, at 100 nanoTON
NOW = 1_800_000_000_000


@pytest.fixture
def keys() -> WorkerKeys:
    return WorkerKeys.generate()


@pytest.fixture
def processor(keys: WorkerKeys) -> Processor:
    verify = Ed25519ReceiptVerifier(
        lambda worker: keys.public.signing_key if worker == "w1" else None, canonical_message
    )
    p = Processor(
        PRICES,
        verify,
        hold_grace_ms=0,
        outcome_grace_ms=0,
        grants=GrantPolicy(usable_ms=30_000, clock_skew_ms=2_000),
    )
    p.grant("alice", 1_000_000, NOW)
    p.take()
    return p


def granted(processor: Processor, asking: str = "r-ask") -> str:
    processor.on_request(request(asking, "alice", grant_ask_requests=2), NOW)
    (grant,) = processor.take().grants
    assert (grant["status"], grant["amount_nanoton"]) == ("GRANTED", 2 * HOLD)
    return grant["grant_id"]


def test_a_request_its_grant_cannot_fund_is_decided_on_the_balance(processor):
    grant_id = granted(processor)
    for rid in ("r-1", "r-2"):
        processor.on_request(request(rid, "alice", grant_id=grant_id), NOW)
    assert processor.take().reservations == []  # carved out of the grant: nothing to answer
    # The grant is spent: the third is held from the balance and answered like any request.
    processor.on_request(request("r-3", "alice", grant_id=grant_id), NOW)
    (answer,) = processor.take().reservations
    assert (answer["status"], answer["amount_nanoton"]) == ("HELD", HOLD)
    assert processor.engine.hold("r-3").grant_id is None
    # An unknown grant, and no funds left for the balance either: REJECTED (the scheduler then
    # takes the placement back, the gateway answers 402).
    processor.on_request(request("r-big", "alice", grant_id="g-nope", max_tokens=10**6), NOW)
    (refused,) = processor.take().reservations
    assert (refused["status"], refused["reject_reason"]) == ("REJECTED", "INSUFFICIENT_FUNDS")


def test_a_receipt_before_its_request_waits_then_captures_or_is_refused(processor, keys):
    grant_id = granted(processor)
    early = receipt_of(receipt(keys, "r-early", "w1"))
    processor.tick(NOW, receipts_read_to_ms=None, requests_read_to_ms=NOW)
    with pytest.raises(ReceiptTooEarly):
        processor.on_receipt(early, NOW, sent_at_ms=NOW)
    # The request shows up: the same receipt now captures.
    processor.on_request(request("r-early", "alice", grant_id=grant_id), NOW)
    assert processor.on_receipt(early, NOW, sent_at_ms=NOW).status == "captured"
    # A receipt whose request never comes: refused once the requests are read past it + skew.
    ghost = receipt_of(receipt(keys, "r-ghost", "w1"))
    with pytest.raises(ReceiptTooEarly):
        processor.on_receipt(ghost, NOW, sent_at_ms=NOW)
    processor.tick(NOW + 2_000, receipts_read_to_ms=None, requests_read_to_ms=NOW + 2_000)
    result = processor.on_receipt(ghost, NOW + 2_000, sent_at_ms=NOW)
    assert (result.status, result.reason.value) == ("rejected", "unknown_request")


def test_a_placement_read_before_its_request_still_supersedes(processor, keys):
    grant_id = granted(processor)
    # Billing reads the re-placement (attempt 2) before the request itself.
    processor.on_assignment(assignment("r-1", "w1", attempt=2), NOW)
    processor.on_request(request("r-1", "alice", grant_id=grant_id), NOW)
    stale = receipt_of(receipt(keys, "r-1", "w1", attempt=1))
    result = processor.on_receipt(stale, NOW)
    assert (result.status, result.reason.value) == ("rejected", "superseded_attempt")
    current = receipt_of(receipt(keys, "r-1", "w1", attempt=2))
    assert processor.on_receipt(current, NOW).status == "captured"


def test_grants_close_only_once_the_requests_are_read_past_their_end(processor):
    grant_id = granted(processor)
    processor.on_request(request("r-1", "alice", grant_id=grant_id), NOW)
    processor.take()
    end = NOW + 30_000
    processor.tick(end + 5_000, requests_read_to_ms=end + 1_999)  # within the skew allowance
    assert processor.take().grants == []
    processor.tick(end + 5_000, requests_read_to_ms=end + 2_000)
    (closed,) = processor.take().grants
    assert (closed["status"], closed["amount_nanoton"]) == ("CLOSED", HOLD)
    assert processor.engine.grant(grant_id) is None
