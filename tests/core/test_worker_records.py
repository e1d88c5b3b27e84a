"""Heartbeats and outcomes signed by the worker's attested key (cocoon.core.worker_records)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cocoon.core import codec
from cocoon.core.codec import models
from cocoon.core.contracts import ErrorCode
from cocoon.core.crypto.keys import WorkerKeys
from cocoon.core.crypto.receipts import RECEIPT_DOMAIN
from cocoon.core.worker_records import (
    HEARTBEAT,
    OUTCOME,
    ForgedRecord,
    record_message,
    sign_record,
    verify_record,
    verify_value,
)

KEYS = WorkerKeys.generate()
OTHER = WorkerKeys.generate()


def key_of(worker_id: str) -> bytes | None:
    return KEYS.public.signing_key if worker_id == "w-1" else None


def heartbeat(**changes) -> models.Heartbeat:
    fields = {
        "worker_id": "w-1",
        "models": ["m"],
        "state": "READY",
        "max_active_requests": 4,
        "active_requests": 1,
        "coefficient": 1000,
        "work_topic": "work.w-1",
        "seq": 7,
        "sent_at": datetime.now(UTC),  # microseconds: the wire keeps milliseconds
        "avg_request_ms": 1850.25,
    }
    return models.Heartbeat(**{**fields, **changes})


def outcome(**changes) -> models.Outcome:
    fields = {
        "request_id": "r-1",
        "attempt": 1,
        "worker_id": "w-1",
        "model": "m",
        "status": "SUCCEEDED",
        "reported_by": "worker-proxy",
        "duration_ms": 10,
        "completion_tokens": 3,
        "finished_at": datetime.now(UTC),
    }
    return models.Outcome(**{**fields, **changes})


@pytest.mark.parametrize("record", [heartbeat(), outcome()], ids=["heartbeat", "outcome"])
def test_a_signed_record_verifies_after_the_wire(record):
    signed = sign_record(KEYS, record)
    name, value = codec.decode(codec.encode(signed))
    assert verify_value(name, value, key_of) == signed


def _code(record, key_of=key_of) -> ErrorCode:
    with pytest.raises(ForgedRecord) as refused:
        verify_record(record, key_of)
    return refused.value.code


def test_every_field_is_covered():
    signed = sign_record(KEYS, heartbeat())
    for field, value in {
        "state": "DISABLED",
        "seq": 10**9,
        "avg_request_ms": 1850.5,
        "models": ["m", "n"],
        "work_topic": "work.w-2",
    }.items():
        changed = signed.model_copy(update={field: value})
        assert _code(changed) is ErrorCode.BAD_RECORD_SIGNATURE, field
    assert set(HEARTBEAT.fields) == set(models.Heartbeat.model_fields) - {"signature"}
    assert set(OUTCOME.fields) == set(models.Outcome.model_fields) - {"signature"}


def test_forged_records_are_refused_with_their_reason():
    assert _code(heartbeat()) is ErrorCode.UNSIGNED_RECORD
    assert _code(sign_record(OTHER, heartbeat())) is ErrorCode.BAD_RECORD_SIGNATURE
    assert _code(sign_record(KEYS, heartbeat(worker_id="w-2"))) is ErrorCode.UNTRUSTED_WORKER
    assert _code(sign_record(KEYS, outcome()), lambda _: None) is ErrorCode.UNTRUSTED_WORKER
    # A heartbeat's signature does not pass for an outcome's, nor a receipt's domain for either.
    assert HEARTBEAT.domain != OUTCOME.domain and RECEIPT_DOMAIN not in (
        HEARTBEAT.domain,
        OUTCOME.domain,
    )
    assert HEARTBEAT.domain.encode() in record_message(heartbeat())


def test_the_schedulers_own_outcomes_need_no_worker_signature():
    verify_record(outcome(reported_by="scheduler", worker_id=""), key_of)
