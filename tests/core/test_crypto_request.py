"""HPKE request sealing: opens only for the worker, request and model it was sealed for."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.core.crypto import (
    RESPONSE_KEY_LEN,
    CryptoError,
    HpkeSuite,
    OpenError,
    SealedRequest,
    WorkerKeys,
    WorkerPublicKeys,
    open_request,
    seal_request,
)

BODY = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}).encode()
SUITES = list(HpkeSuite)


@pytest.fixture(scope="module")
def worker_a() -> WorkerKeys:
    return WorkerKeys.generate()


@pytest.fixture(scope="module")
def worker_b() -> WorkerKeys:
    return WorkerKeys.generate()


@pytest.mark.parametrize("suite", SUITES)
def test_round_trip(worker_a, suite):
    sealed, key = seal_request(worker_a.public, "req-1", "worker-a", "smollm2", BODY, suite=suite)
    assert sealed.suite is suite and len(sealed.enc) == suite.enc_length()
    assert BODY not in sealed.ciphertext
    body, opened_key = open_request(worker_a, "req-1", "worker-a", "smollm2", sealed)
    assert body == BODY and opened_key == key and len(key) == RESPONSE_KEY_LEN


def test_default_suite_is_the_post_quantum_hybrid(worker_a):
    sealed, _ = seal_request(worker_a.public, "r", "w", "m", BODY)
    assert sealed.suite is HpkeSuite.MLKEM768_X25519


@pytest.mark.parametrize("suite", SUITES)
def test_other_worker_cannot_open(worker_a, worker_b, suite):
    sealed, _ = seal_request(worker_a.public, "req-1", "worker-a", "smollm2", BODY, suite=suite)
    with pytest.raises(OpenError):
        open_request(worker_b, "req-1", "worker-a", "smollm2", sealed)


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize(
    "context",
    [
        ("req-2", "worker-a", "smollm2"),  # replayed to another request
        ("req-1", "worker-b", "smollm2"),  # claimed for another worker id
        ("req-1", "worker-a", "other-model"),  # run on another model
    ],
)
def test_context_is_bound(worker_a, suite, context):
    sealed, _ = seal_request(worker_a.public, "req-1", "worker-a", "smollm2", BODY, suite=suite)
    with pytest.raises(OpenError):
        open_request(worker_a, *context, sealed)


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("field", ["enc", "ciphertext"])
def test_tampering_is_detected(worker_a, suite, field):
    sealed, _ = seal_request(worker_a.public, "req-1", "worker-a", "smollm2", BODY, suite=suite)
    raw = bytearray(getattr(sealed, field))
    raw[len(raw) // 2] ^= 0x01
    with pytest.raises(OpenError):
        open_request(
            worker_a, "req-1", "worker-a", "smollm2", replace(sealed, **{field: bytes(raw)})
        )


def test_suite_label_swap_is_refused(worker_a):
    sealed, _ = seal_request(worker_a.public, "r", "w", "m", BODY, suite=HpkeSuite.X25519)
    with pytest.raises(OpenError):
        open_request(worker_a, "r", "w", "m", replace(sealed, suite=HpkeSuite.MLKEM768_X25519))


def test_response_keys_are_fresh(worker_a):
    keys = {seal_request(worker_a.public, "r", "w", "m", BODY)[1] for _ in range(5)}
    assert len(keys) == 5


def test_record_round_trip(worker_a):
    sealed, _ = seal_request(worker_a.public, "r", "w", "m", BODY)
    record = sealed.to_record()
    assert set(record) == {"hpke_suite", "hpke_enc", "sealed_request"}
    assert SealedRequest.from_record(record) == sealed
    with pytest.raises(OpenError):
        SealedRequest.from_record({**record, "hpke_suite": "ROT13"})


def test_public_keys_serialise(worker_a):
    public = worker_a.public
    assert (len(public.signing_key), len(public.hpke_x25519)) == (32, 32)
    assert len(public.hpke_mlkem768_x25519) == 1184 + 32
    assert WorkerPublicKeys.from_dict(json.loads(json.dumps(public.to_dict()))) == public
    with pytest.raises(CryptoError):
        WorkerPublicKeys(public.signing_key, public.hpke_x25519[:31], public.hpke_mlkem768_x25519)
    assert "WorkerKeys(" in repr(worker_a)


@settings(max_examples=25, deadline=None)
@given(
    body=st.binary(max_size=4096),
    request_id=st.text(min_size=1, max_size=40),
    model=st.text(min_size=1, max_size=40),
    suite=st.sampled_from(SUITES),
)
def test_round_trip_property(worker_a, body, request_id, model, suite):
    sealed, key = seal_request(worker_a.public, request_id, "worker-a", model, body, suite=suite)
    assert open_request(worker_a, request_id, "worker-a", model, sealed) == (body, key)
