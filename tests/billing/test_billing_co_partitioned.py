"""Billing refuses a request whose id is not co-partitioned with its account: its receipts
and outcomes would land on another account shard than its hold (docs/billing-service.md)."""

from __future__ import annotations

import uuid

import pytest
from billing_service_support import request
from billing_support import PRICES, Workers

from cocoon.billing.stream_handlers import GrantPolicy, Processor
from cocoon.core.codec import models
from cocoon.core.request_ids import account_partitions, is_co_partitioned, new_request_id

NOW = 1_764_000_000_000


@pytest.fixture
def processor() -> Processor:
    p = Processor(
        PRICES,
        Workers().verifier(),
        hold_grace_ms=0,
        outcome_grace_ms=0,
        grants=GrantPolicy(usable_ms=30_000),
        partitions=account_partitions(),
    )
    p.grant("alice", 10**9, NOW)
    p.take()
    return p


def stray(account: str) -> str:
    """A request id on another partition than `account`'s."""
    return next(
        rid
        for rid in (str(uuid.uuid4()) for _ in range(200))
        if not is_co_partitioned(rid, account)
    )


def test_a_stray_request_is_rejected_with_the_reason_and_holds_nothing(processor):
    rid = stray("alice")
    processor.on_request(request(rid, "alice"), NOW)
    batch = processor.take()
    (answer,) = batch.reservations
    assert (answer["status"], answer["reject_reason"], answer["amount_nanoton"]) == (
        "REJECTED",
        models.RejectReason.REQUEST_NOT_CO_PARTITIONED,
        0,
    )
    assert batch.entries == [] and processor.engine.hold(rid) is None
    assert processor.engine.available("alice") == 10**9


def test_a_stray_grant_ask_is_refused(processor):
    rid = stray("alice")
    processor.on_request(request(rid, "alice", grant_ask_requests=3), NOW)
    batch = processor.take()
    assert [g["status"] for g in batch.grants] == ["REFUSED"]
    assert batch.entries == [] and processor.engine.available("alice") == 10**9


def test_a_co_partitioned_request_is_held(processor):
    rid = new_request_id("alice")
    processor.on_request(request(rid, "alice"), NOW)
    (answer,) = processor.take().reservations
    assert (answer["status"], answer["reject_reason"]) == ("HELD", None)
    assert processor.engine.hold(rid) is not None
