"""Signatures checked ahead on several threads decide exactly as the inline check does."""

from __future__ import annotations

import dataclasses

import pytest
from billing_support import Workers, receipt_message

from cocoon.billing.pricing import Usage
from cocoon.billing.receipts import Ed25519ReceiptVerifier


@pytest.fixture
def workers() -> Workers:
    w = Workers()
    for worker_id in ("w1", "w2", "w3"):
        w.add(worker_id)
    return w


def batch(workers: Workers) -> list:
    """Good receipts, a forged one, one signed by another worker, one with a stale key."""
    good = [workers.receipt(f"r{i}", f"w{i % 3 + 1}", Usage(10, 0, i + 1, 0)) for i in range(30)]
    forged = dataclasses.replace(good[0], usage=Usage(10, 0, 999, 0))  # signature of good[0]
    impostor = workers.receipt("r-imp", "w1", Usage(1, 0, 1, 0), signer="w2")
    return [*good, forged, impostor]


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_checked_ahead_decides_like_inline(workers, threads):
    receipts = batch(workers)
    inline = Ed25519ReceiptVerifier(workers.current.get, receipt_message)
    ahead = Ed25519ReceiptVerifier(workers.current.get, receipt_message, threads=threads)
    try:
        ahead.check_ahead(receipts)
        assert len(ahead._checked) >= 30  # the good ones were really checked ahead
        decisions = [ahead(r) for r in receipts]
        assert decisions == [inline(r) for r in receipts]
        assert decisions == [True] * 30 + [False, False]
    finally:
        ahead.close()


def test_a_valid_signature_checked_ahead_does_not_vouch_for_a_changed_receipt(workers):
    ahead = Ed25519ReceiptVerifier(workers.current.get, receipt_message, threads=2)
    try:
        good = workers.receipt("r1", "w1", Usage(10, 0, 5, 0))
        other = workers.receipt("r2", "w2", Usage(10, 0, 5, 0))
        ahead.check_ahead([good, other])
        # Same signature and key, more tokens: not the receipt that was checked.
        assert not ahead(dataclasses.replace(good, usage=Usage(10, 0, 500, 0)))
        assert ahead(good)
    finally:
        ahead.close()


def test_the_current_key_is_decided_at_capture_not_ahead(workers):
    ahead = Ed25519ReceiptVerifier(workers.current.get, receipt_message, threads=2)
    try:
        receipts = [workers.receipt(f"r{i}", "w1", Usage(1, 0, 1, 0)) for i in range(4)]
        ahead.check_ahead(receipts)
        workers.add("w1")  # a new verdict with a new key arrives before capture
        assert not any(ahead(r) for r in receipts)
    finally:
        ahead.close()
