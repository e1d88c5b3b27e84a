"""The client's envelope and the worker's side (cocoon.core) are two implementations of one
protocol (docs/sealed-requests.md): each test runs one side against the other."""

from __future__ import annotations

import json
import os
import time

import pytest

from cocoon.client import canonical as client_canonical
from cocoon.client.errors import WireError
from cocoon.client.seal import (
    DEFAULT_SUITE,
    StreamOpener,
    WorkerKey,
    hpke_public_key,
    seal,
    verify_receipt,
)
from cocoon.core.crypto import (
    OpenError,
    ResponseSealer,
    UsageReceipt,
    WorkerKeys,
    canonical_bytes,
    sign_receipt,
)
from cocoon.core.crypto.client_seal import client_stream_key, open_client_request
from cocoon.core.crypto.keys import HpkeSuite

MODEL = "smollm2-135m"


def worker_key(worker_id: str, keys: WorkerKeys, suite: str = DEFAULT_SUITE) -> WorkerKey:
    public = keys.public
    return WorkerKey(
        worker_id,
        suite,
        hpke_public_key(suite, public.hpke_x25519, public.hpke_mlkem768_x25519),
        public.signing_key,
    )


def test_the_canonical_encoding_is_the_same_bytes_as_cores() -> None:
    vector = {"c": "é", "a": -5, "b": [True, None, b"\x00\xff"], "d": {"x": 0, "y": ""}}
    assert client_canonical.canonical_bytes(vector) == canonical_bytes(vector)


@pytest.mark.parametrize("suite", [DEFAULT_SUITE, HpkeSuite.X25519.value])
def test_sealed_once_every_candidate_opens_and_nobody_else(suite: str) -> None:
    keys = {w: WorkerKeys.generate() for w in ("w-a", "w-b", "w-c")}
    body = b'{"model":"smollm2-135m","messages":[{"role":"user","content":"canary"}]}'
    envelope, request_key = seal(
        body, "req-1", MODEL, [worker_key(w, keys[w], suite) for w in ("w-a", "w-b")]
    )
    assert b"canary" not in envelope.ciphertext
    for recipient in envelope.recipients:
        opened, key = open_client_request(
            keys[recipient.worker_id],
            request_id="req-1",
            worker_id=recipient.worker_id,
            model=MODEL,
            suite=HpkeSuite(suite),
            enc=recipient.enc,
            wrapped_key=recipient.wrapped_key,
            ciphertext=envelope.ciphertext,
        )
        assert opened == body and key == request_key
    a = envelope.recipients[0]
    attempts = [
        dict(worker=keys["w-c"], worker_id="w-a", request_id="req-1", model=MODEL),  # not sealed to
        dict(worker=keys["w-b"], worker_id="w-a", request_id="req-1", model=MODEL),  # another key
        dict(worker=keys["w-a"], worker_id="w-a", request_id="req-2", model=MODEL),  # replayed
        dict(worker=keys["w-a"], worker_id="w-a", request_id="req-1", model="other"),  # re-routed
    ]
    for attempt in attempts:
        with pytest.raises(OpenError):
            open_client_request(
                attempt.pop("worker"),
                suite=HpkeSuite(suite),
                enc=a.enc,
                wrapped_key=a.wrapped_key,
                ciphertext=envelope.ciphertext,
                **attempt,
            )
    with pytest.raises(OpenError):  # a flipped body byte
        tampered = bytes([envelope.ciphertext[0] ^ 1]) + envelope.ciphertext[1:]
        open_client_request(
            keys["w-a"],
            request_id="req-1",
            worker_id="w-a",
            model=MODEL,
            suite=HpkeSuite(suite),
            enc=a.enc,
            wrapped_key=a.wrapped_key,
            ciphertext=tampered,
        )


def test_the_answer_opens_only_under_the_key_of_its_worker_and_attempt() -> None:
    request_key = os.urandom(32)
    sealer = ResponseSealer(client_stream_key(request_key, "req-1", "w-a", 2), "req-1")
    chunks = [sealer.seal(b"Hel"), sealer.seal(b"lo", final=True)]
    opener = StreamOpener(request_key, "req-1", "w-a", 2)
    assert [opener.open(c.seq, c.final, c.ciphertext) for c in chunks] == [b"Hel", b"lo"]
    assert opener.finished
    for worker_id, attempt in (("w-b", 2), ("w-a", 1)):
        with pytest.raises(WireError):
            StreamOpener(request_key, "req-1", worker_id, attempt).open(
                0, False, chunks[0].ciphertext
            )
    reordered = StreamOpener(request_key, "req-1", "w-a", 2)
    with pytest.raises(WireError):
        reordered.open(1, True, chunks[1].ciphertext)


def test_a_receipt_verifies_against_the_attested_key_only() -> None:
    keys = WorkerKeys.generate()
    now = int(time.time() * 1000)
    signed = sign_receipt(
        keys,
        UsageReceipt("req-1:1", "req-1", 1, "w-a", MODEL, 7, 0, 3, 0, 1000, True, now, now + 5),
    )
    wire = {
        **signed.receipt.fields(),
        "signing_key": signed.signing_key.hex(),
        "signature": signed.signature.hex(),
    }
    ok = verify_receipt(
        wire, keys.public.signing_key, request_id="req-1", worker_id="w-a", attempt=1
    )
    assert ok["completion_tokens"] == 3
    with pytest.raises(WireError, match="other than the worker's attested key"):
        verify_receipt(
            wire,
            WorkerKeys.generate().public.signing_key,
            request_id="req-1",
            worker_id="w-a",
            attempt=1,
        )
    with pytest.raises(WireError, match="does not verify"):
        verify_receipt(
            {**wire, "completion_tokens": 2},
            keys.public.signing_key,
            request_id="req-1",
            worker_id="w-a",
            attempt=1,
        )
    with pytest.raises(WireError, match="another request"):
        verify_receipt(
            wire, keys.public.signing_key, request_id="req-9", worker_id="w-a", attempt=1
        )


def test_an_opened_record_gives_each_coalesced_engine_chunk():
    from cocoon.client.session import engine_chunks

    chunks = [{"choices": [{"delta": {"content": t}}]} for t in ("a", "b\nc", "d")]
    record = b"\n".join(json.dumps(c, separators=(",", ":")).encode() for c in chunks)
    assert engine_chunks(record) == chunks
    assert engine_chunks(json.dumps(chunks[0]).encode()) == chunks[:1]  # one chunk alone
    with pytest.raises(WireError):
        engine_chunks(b'{"choices": []}\nnot json')
