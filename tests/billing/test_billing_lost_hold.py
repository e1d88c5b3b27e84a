"""A request the ledger remembers holding, which the engine has neither open nor settled.

The chaos test once crashed billing with a KeyError in `open_hold` in that state, when a late
replay of the request came in (docs/billing-service.md, "A lost hold"). Whatever put the engine
there, the replay must be refused with the reason (the service dead-letters it), nothing may
be recorded for it, and the next request must be handled as usual.
"""

from __future__ import annotations

import json
import logging

import pytest
from billing_service_support import request
from billing_support import PRICES, Workers

from cocoon.billing.engine import grant_id_for
from cocoon.billing.money import LedgerStateError
from cocoon.billing.pricing import Usage
from cocoon.billing.stream_handlers import BadRecord, Processor
from cocoon.billing.stream_replay import _check_sequence
from cocoon.core.codec.timestamps import now_millis


def restored(p: Processor, workers: Workers, lose: str) -> Processor:
    """`p` restored from a snapshot (through its JSON) in which `lose` is no longer settled."""
    state = json.loads(json.dumps(p.state()))
    del state["engine"]["closed"][lose]
    return Processor(
        PRICES, workers.verifier(), snapshot=state, hold_grace_ms=0, outcome_grace_ms=0
    )


def test_a_replayed_request_whose_hold_was_lost_is_refused_and_nothing_is_recorded():
    workers = Workers()
    workers.add("w1")
    p = Processor(PRICES, workers.verifier(), hold_grace_ms=0, outcome_grace_ms=0)
    p.grant("alice", 10**9, 0)
    now = now_millis()
    paid = request("paid", "alice")
    p.on_request(paid, now)
    assert p.on_receipt(workers.receipt("paid", "w1", Usage(100, 0, 50, 0)), now).status == (
        "captured"
    )
    p.take()

    again = restored(p, workers, "paid")
    entries, balances = len(again.engine.ledger), again.engine.ledger.balances()
    with pytest.raises(BadRecord, match="hold:paid is in the ledger, but the request is neither"):
        again.on_request(paid, now)
    assert not again.take()  # no entry, no reservation, no grant answer
    assert (len(again.engine.ledger), again.engine.ledger.balances()) == (entries, balances)
    # The engine itself says so too (not a KeyError).
    with pytest.raises(LedgerStateError):
        again.engine.open_hold(
            "paid", "alice", max_tokens=1, prompt_size=1, max_coefficient=1000, expires_at_ms=1
        )
    # The next request is held as usual.
    again.on_request(request("next", "alice"), now)
    assert again.engine.hold("next") is not None
    assert [r["status"] for r in again.take().reservations] == ["HELD"]


def test_a_replayed_granted_request_whose_hold_was_lost_is_refused_too():
    workers = Workers()
    p = Processor(PRICES, workers.verifier(), hold_grace_ms=0, outcome_grace_ms=0)
    p.grant("alice", 10**9, 0)
    now = now_millis()
    p.on_request(request("asker", "alice", grant_ask_requests=5), now)
    granted = request("granted", "alice", grant_id=grant_id_for("asker"))
    p.on_request(granted, now)
    assert p.engine.hold("granted").grant_id == grant_id_for("asker")
    assert p.engine.release_hold("granted", now)
    p.take()

    again = restored(p, workers, "granted")
    entries = len(again.engine.ledger)
    # Not held again from the grant, nor (as a grant that cannot fund it would be) from the
    # balance: refused with the reason.
    with pytest.raises(BadRecord, match="hold:granted is in the ledger"):
        again.on_request(granted, now)
    assert not again.take() and len(again.engine.ledger) == entries


@pytest.mark.parametrize(
    ("seqs", "complaint"),
    [
        ([5, 6, 7], None),
        ([], None),
        ([5, 7], "(6 expected next; 2 entries read)"),  # one missing: the snapshot lacks it
        ([5, 6, 6, 7], "(7 expected next; 4 entries read)"),  # two entries under one number
        ([6, 7], "(5 expected next; 2 entries read)"),
    ],
)
def test_a_ledger_read_whose_numbers_skip_or_repeat_is_reported(caplog, seqs, complaint):
    """Every applied entry takes the next number, so a gap or a repeat in what a restart reads
    means the snapshot and the log disagree: logged as an error, to find where from."""
    with caplog.at_level(logging.ERROR, logger="cocoon.billing.stream_replay"):
        _check_sequence(seqs, 5, "billing.ledger")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if complaint is None:
        assert errors == []
    else:
        assert len(errors) == 1 and errors[0].endswith(complaint), errors
        assert "not contiguous from 5" in errors[0]
