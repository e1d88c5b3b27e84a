"""Usage receipts: signed by the worker's key, every field covered, key pinned by the verdict."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cocoon.core.crypto import (
    RECEIPT_DOMAIN,
    CryptoError,
    SignatureError,
    SignedReceipt,
    UsageReceipt,
    WorkerKeys,
    receipt_message,
    sign_receipt,
    signed_message,
    verify_receipt,
)

RECEIPT = UsageReceipt(
    receipt_id="req-1:0",
    request_id="req-1",
    attempt=0,
    worker_id="worker-a",
    model="smollm2",
    prompt_tokens=31,
    cached_prompt_tokens=8,
    completion_tokens=40,
    reasoning_tokens=0,
    coefficient=1000,
    completed=True,
    started_at=1_700_000_000_000,
    finished_at=1_700_000_000_450,
)


@pytest.fixture(scope="module")
def keys() -> WorkerKeys:
    return WorkerKeys.generate()


def test_sign_and_verify(keys):
    signed = sign_receipt(keys, RECEIPT)
    assert signed.signing_key == keys.public.signing_key and len(signed.signature) == 64
    assert verify_receipt(signed, expected_signing_key=keys.public.signing_key) == RECEIPT


ALTERED = {
    "receipt_id": "req-1:1",
    "request_id": "req-2",
    "attempt": 1,
    "worker_id": "worker-b",
    "model": "other",
    "prompt_tokens": 32,
    "cached_prompt_tokens": 0,
    "completion_tokens": 400,
    "reasoning_tokens": 1,
    "coefficient": 999,
    "completed": False,
    "started_at": 1_699_999_999_999,
    "finished_at": 1_700_000_000_451,
}


def test_every_field_is_signed(keys):
    assert set(ALTERED) == {f.name for f in dataclasses.fields(UsageReceipt)}
    signed = sign_receipt(keys, RECEIPT)
    for name, value in ALTERED.items():
        forged = dataclasses.replace(signed, receipt=dataclasses.replace(RECEIPT, **{name: value}))
        with pytest.raises(SignatureError):
            verify_receipt(forged)


def test_key_other_than_the_attested_one_is_rejected(keys):
    intruder = WorkerKeys.generate()
    signed = sign_receipt(intruder, RECEIPT)
    verify_receipt(signed)  # valid on its own ...
    with pytest.raises(SignatureError, match="attested"):
        verify_receipt(signed, expected_signing_key=keys.public.signing_key)  # ... not for billing
    # Swapping in the attested key breaks the signature.
    with pytest.raises(SignatureError):
        verify_receipt(dataclasses.replace(signed, signing_key=keys.public.signing_key))


def test_record_round_trip_including_avro_datetimes(keys):
    signed = sign_receipt(keys, RECEIPT)
    record = signed.to_record()
    assert SignedReceipt.from_record(record) == signed
    as_decoded = {
        **record,
        "started_at": datetime.fromtimestamp(RECEIPT.started_at / 1000, UTC),
        "finished_at": datetime.fromtimestamp(RECEIPT.finished_at / 1000, UTC),
    }
    assert verify_receipt(SignedReceipt.from_record(as_decoded)) == RECEIPT
    with pytest.raises(CryptoError):
        SignedReceipt.from_record({"request_id": "x"})


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt_tokens": -1},
        {"cached_prompt_tokens": 32},
        {"reasoning_tokens": 41},
        {"finished_at": 1},
        {"completion_tokens": 1.5},
    ],
)
def test_inconsistent_counts_are_refused(bad):
    with pytest.raises(CryptoError):
        dataclasses.replace(RECEIPT, **bad)


def test_signed_bytes_are_the_documented_message(keys):
    # Billing verifies with a raw Ed25519 key over these bytes; the contract must hold exactly.
    signed = sign_receipt(keys, RECEIPT)
    fields = {**dataclasses.asdict(RECEIPT), "signing_key": keys.public.signing_key}
    message = signed_message(RECEIPT_DOMAIN, fields)
    assert receipt_message(RECEIPT, keys.public.signing_key) == message
    Ed25519PublicKey.from_public_bytes(signed.signing_key).verify(signed.signature, message)
