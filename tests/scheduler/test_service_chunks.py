"""Reading a sealed chunk's head without decoding it, and the service's settings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cocoon.core import codec
from cocoon.core.codec import models
from cocoon.scheduler.chunks import RECORD, ChunkHead, chunk_head
from cocoon.scheduler.service import Settings

KEY_HEX = "11" * 32


def sealed(request_id: str, attempt: int, seq: int, ciphertext: bytes = b"c") -> bytes:
    return codec.encode(
        models.SealedChunk(
            request_id=request_id,
            worker_id="w-é",
            attempt=attempt,
            gateway_id="gw",
            seq=seq,
            final=False,
            ciphertext=ciphertext,
            produced_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
    )


@given(
    request_id=st.text(max_size=80),
    attempt=st.integers(-(2**31), 2**31 - 1),
    seq=st.integers(-(2**63), 2**63 - 1),
    ciphertext=st.binary(max_size=300),
)
def test_head_matches_the_full_decode(request_id, attempt, seq, ciphertext):
    data = sealed(request_id, attempt, seq, ciphertext)
    full = codec.decode(data)[1]
    assert chunk_head(data) == ChunkHead(full["request_id"], full["attempt"], full["seq"])
    assert chunk_head(data) == ChunkHead(request_id, attempt, seq)


def test_the_fast_path_is_taken_for_the_version_it_assumes():
    # The head reader pins SealedChunk v1's field order; if it changes, this must be revisited.
    v1 = codec.default_store().get(RECORD, 1)
    names = [f["name"] for f in v1.raw["fields"][:5]]
    assert names == ["request_id", "worker_id", "attempt", "gateway_id", "seq"]
    data = sealed("r", 2, 0)
    assert data[: codec.HEADER_SIZE] == v1.header
    # A body cut inside the leading fields is refused, not misread.
    with pytest.raises(codec.DecodeError):
        chunk_head(data[: codec.HEADER_SIZE + 3])


@pytest.mark.parametrize("data", [b"", b"garbage", codec.MAGIC + b"\xff" * 8 + b"body"])
def test_garbage_is_a_decode_error(data):
    with pytest.raises(codec.DecodeError):
        chunk_head(data)


def test_another_record_is_refused():
    outcome = models.Outcome(
        request_id="r",
        attempt=1,
        worker_id="w",
        model="m",
        status="SUCCEEDED",
        reported_by="worker-proxy",
        duration_ms=1,
        completion_tokens=1,
        finished_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    with pytest.raises(codec.WrongRecordError):
        chunk_head(codec.encode(outcome))


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("COCOON_ATTESTATION_PUBLIC_KEY", KEY_HEX)
    monkeypatch.setenv("COCOON_LEASE_SECONDS", "2.5")
    monkeypatch.setenv("COCOON_NO_WORKER_WAIT_SECONDS", "7")
    monkeypatch.setenv("COCOON_HEARTBEAT_STALE_SECONDS", "4")
    monkeypatch.setenv("COCOON_MAX_ATTEMPTS", "5")
    s = Settings()
    assert (s.lease_seconds, s.no_worker_wait_seconds, s.heartbeat_stale_seconds) == (2.5, 7, 4)
    assert s.max_attempts == 5 and s.consumer_group == "scheduler"


def test_settings_refuse_a_missing_or_bad_key(monkeypatch, tmp_path):
    monkeypatch.delenv("COCOON_ATTESTATION_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("COCOON_ATTESTATION_PUBLIC_KEY_FILE", raising=False)
    with pytest.raises(ValidationError, match="COCOON_ATTESTATION_PUBLIC_KEY"):
        Settings()
    with pytest.raises(ValidationError, match="32 bytes"):
        Settings(attestation_public_key="abcd")
    key_file = tmp_path / "attestation.pub"
    key_file.write_text(KEY_HEX + "\n")
    assert Settings(attestation_public_key=str(key_file)).pinned_key() == bytes.fromhex(KEY_HEX)
    monkeypatch.setenv("COCOON_ATTESTATION_PUBLIC_KEY_FILE", str(key_file))
    assert Settings().pinned_key() == bytes.fromhex(KEY_HEX)
