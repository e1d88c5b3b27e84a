"""AEAD response streams: tampering, reordering, duplication and truncation are all errors."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.core.crypto import (
    CryptoError,
    OutOfOrderChunkError,
    ResponseOpener,
    ResponseSealer,
    StreamChunk,
    StreamCipher,
    StreamError,
    TamperedChunkError,
    TruncatedStreamError,
)

KEY = os.urandom(32)
PIECES = [b'{"delta":"Hel"}', b'{"delta":"lo"}', b'{"usage":{"completion_tokens":2}}']


def sealed_stream(key: bytes = KEY, request_id: str = "req-1", **kw) -> list[StreamChunk]:
    sealer = ResponseSealer(key, request_id, **kw)
    chunks = [sealer.seal(p) for p in PIECES[:-1]]
    chunks.append(sealer.seal(PIECES[-1], final=True))
    return chunks


@pytest.mark.parametrize("cipher", list(StreamCipher))
def test_round_trip(cipher):
    chunks = sealed_stream(cipher=cipher)
    assert [c.seq for c in chunks] == [0, 1, 2] and [c.final for c in chunks] == [0, 0, 1]
    opener = ResponseOpener(KEY, "req-1", cipher=cipher)
    assert [opener.open_chunk(c) for c in chunks] == PIECES
    assert opener.finished
    opener.end()  # a complete stream ends cleanly


def test_ciphertext_hides_the_content():
    assert all(p not in c.ciphertext for p, c in zip(PIECES, sealed_stream(), strict=True))


def flip(data: bytes, at: int) -> bytes:
    raw = bytearray(data)
    raw[at] ^= 0x80
    return bytes(raw)


@pytest.mark.parametrize("at", [0, 5, -1])  # body and tag bytes
def test_tampered_ciphertext(at):
    chunks = sealed_stream()
    opener = ResponseOpener(KEY, "req-1")
    opener.open_chunk(chunks[0])
    with pytest.raises(TamperedChunkError):
        opener.open(1, False, flip(chunks[1].ciphertext, at))


def test_forged_final_flag_is_detected():
    # Marking a middle chunk final would let an attacker truncate the stream silently.
    chunks = sealed_stream()
    opener = ResponseOpener(KEY, "req-1")
    opener.open_chunk(chunks[0])
    with pytest.raises(TamperedChunkError):
        opener.open(1, True, chunks[1].ciphertext)


def test_final_chunk_relabelled_as_not_final_is_detected():
    chunks = sealed_stream()
    opener = ResponseOpener(KEY, "req-1")
    opener.open_chunk(chunks[0])
    opener.open_chunk(chunks[1])
    with pytest.raises(TamperedChunkError):
        opener.open(2, False, chunks[2].ciphertext)


def test_swapped_sequence_numbers_are_detected():
    chunks = sealed_stream()
    opener = ResponseOpener(KEY, "req-1")
    # Deliver chunk 1's ciphertext labelled as chunk 0: the nonce differs, so it fails.
    with pytest.raises(TamperedChunkError):
        opener.open(0, False, chunks[1].ciphertext)


def test_reordering_is_detected():
    chunks = sealed_stream()
    opener = ResponseOpener(KEY, "req-1")
    opener.open_chunk(chunks[0])
    with pytest.raises(OutOfOrderChunkError, match="expected 1"):
        opener.open_chunk(chunks[2])


def test_duplication_is_detected():
    chunks = sealed_stream()
    opener = ResponseOpener(KEY, "req-1")
    opener.open_chunk(chunks[0])
    opener.open_chunk(chunks[1])
    with pytest.raises(OutOfOrderChunkError, match="duplicate"):
        opener.open_chunk(chunks[1])


def test_truncation_is_detected_when_the_stream_ends():
    chunks = sealed_stream()
    opener = ResponseOpener(KEY, "req-1")
    opener.open_chunk(chunks[0])
    opener.open_chunk(chunks[1])
    assert not opener.finished
    with pytest.raises(TruncatedStreamError):
        opener.end()


def test_empty_stream_is_truncated():
    with pytest.raises(TruncatedStreamError):
        ResponseOpener(KEY, "req-1").end()


def test_nothing_is_accepted_after_the_final_chunk():
    chunks = sealed_stream()
    opener = ResponseOpener(KEY, "req-1")
    for chunk in chunks:
        opener.open_chunk(chunk)
    extra = StreamChunk(3, False, chunks[0].ciphertext)
    with pytest.raises(OutOfOrderChunkError):
        opener.open_chunk(extra)


def test_opener_stays_failed_after_an_error():
    chunks = sealed_stream()
    opener = ResponseOpener(KEY, "req-1")
    with pytest.raises(OutOfOrderChunkError):
        opener.open_chunk(chunks[1])
    with pytest.raises(StreamError):
        opener.open_chunk(chunks[0])  # would be valid on a fresh opener
    with pytest.raises(StreamError):
        opener.end()


@pytest.mark.parametrize(("key", "request_id"), [(os.urandom(32), "req-1"), (KEY, "req-2")])
def test_chunks_are_bound_to_key_and_request(key, request_id):
    with pytest.raises(TamperedChunkError):
        ResponseOpener(key, request_id).open_chunk(sealed_stream()[0])


def test_ciphers_do_not_mix():
    chunk = sealed_stream(cipher=StreamCipher.AES_256_GCM)[0]
    with pytest.raises(TamperedChunkError):
        ResponseOpener(KEY, "req-1", cipher=StreamCipher.CHACHA20_POLY1305).open_chunk(chunk)


def test_sealer_refuses_after_final_and_bad_keys():
    sealer = ResponseSealer(KEY, "req-1")
    sealer.seal(b"only", final=True)
    assert sealer.finished
    with pytest.raises(StreamError):
        sealer.seal(b"more")
    with pytest.raises(CryptoError):
        ResponseSealer(b"short", "req-1")


@settings(max_examples=50, deadline=None)
@given(
    pieces=st.lists(st.binary(max_size=300), min_size=1, max_size=12),
    request_id=st.text(min_size=1, max_size=30),
    cipher=st.sampled_from(list(StreamCipher)),
)
def test_round_trip_property(pieces, request_id, cipher):
    key = os.urandom(32)
    sealer = ResponseSealer(key, request_id, cipher=cipher)
    chunks = [sealer.seal(p, final=i == len(pieces) - 1) for i, p in enumerate(pieces)]
    opener = ResponseOpener(key, request_id, cipher=cipher)
    assert [opener.open_chunk(c) for c in chunks] == pieces
    opener.end()


@settings(max_examples=50, deadline=None)
@given(
    count=st.integers(min_value=2, max_value=8),
    data=st.data(),
)
def test_any_permutation_other_than_identity_fails(count, data):
    key = os.urandom(32)
    sealer = ResponseSealer(key, "r")
    chunks = [sealer.seal(bytes([i]), final=i == count - 1) for i in range(count)]
    order = data.draw(st.permutations(range(count)))
    opener = ResponseOpener(key, "r")
    if list(order) == list(range(count)):
        for i in order:
            opener.open_chunk(chunks[i])
        opener.end()
        return
    with pytest.raises(StreamError):
        for i in order:
            opener.open_chunk(chunks[i])
        opener.end()
