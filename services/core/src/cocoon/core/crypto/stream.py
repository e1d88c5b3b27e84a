"""Response streams: each chunk AEAD-sealed under the per-request response key.

    nonce = 0x00000000 ‖ u64 big-endian seq          (a key seals one stream only, so a
                                                      counter nonce never repeats)
    aad   = canonical_bytes({purpose, request_id, seq, final})

The opener accepts chunks only in order 0, 1, 2, ... and only until the chunk marked final, so
tampering (AEAD failure), reordering, duplication and truncation are all errors. After any error
the opener refuses everything: a broken stream is never resumed.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from cocoon.core.crypto.canonical import canonical_bytes
from cocoon.core.crypto.errors import (
    CryptoError,
    OutOfOrderChunkError,
    StreamError,
    TamperedChunkError,
    TruncatedStreamError,
)
from cocoon.core.crypto.request import RESPONSE_KEY_LEN

_PURPOSE = "cocoon/response/v1"
_MAX_SEQ = 2**64 - 1


class StreamCipher(enum.StrEnum):
    CHACHA20_POLY1305 = "ChaCha20Poly1305"
    AES_256_GCM = "AES-256-GCM"


@dataclass(frozen=True)
class StreamChunk:
    """One sealed chunk as it travels (SealedChunk's seq, final, ciphertext)."""

    seq: int
    final: bool
    ciphertext: bytes


def _aead(key: bytes, cipher: StreamCipher) -> ChaCha20Poly1305 | AESGCM:
    if len(key) != RESPONSE_KEY_LEN:
        raise CryptoError(f"response key must be {RESPONSE_KEY_LEN} bytes")
    return ChaCha20Poly1305(key) if cipher is StreamCipher.CHACHA20_POLY1305 else AESGCM(key)


def _nonce(seq: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack(">Q", seq)


def _aad(request_id: str, seq: int, final: bool) -> bytes:
    return canonical_bytes(
        {"purpose": _PURPOSE, "request_id": request_id, "seq": seq, "final": final}
    )


class ResponseSealer:
    """Worker side: seals chunks 0, 1, 2, ...; the last one must be sealed with final=True."""

    def __init__(
        self,
        response_key: bytes,
        request_id: str,
        cipher: StreamCipher = StreamCipher.CHACHA20_POLY1305,
    ) -> None:
        self._aead = _aead(response_key, StreamCipher(cipher))
        self._request_id = request_id
        self._next = 0
        self._finished = False

    @property
    def next_seq(self) -> int:
        return self._next

    @property
    def finished(self) -> bool:
        return self._finished

    def seal(self, plaintext: bytes, *, final: bool = False) -> StreamChunk:
        if self._finished:
            raise StreamError("the stream was already sealed with its final chunk")
        if self._next > _MAX_SEQ:
            raise StreamError("stream too long")
        seq = self._next
        ciphertext = self._aead.encrypt(
            _nonce(seq), bytes(plaintext), _aad(self._request_id, seq, final)
        )
        self._next += 1
        self._finished = final
        return StreamChunk(seq, final, ciphertext)


class ResponseOpener:
    """Gateway side: opens chunks strictly in order; call `end()` when the transport ends."""

    def __init__(
        self,
        response_key: bytes,
        request_id: str,
        cipher: StreamCipher = StreamCipher.CHACHA20_POLY1305,
    ) -> None:
        self._aead = _aead(response_key, StreamCipher(cipher))
        self._request_id = request_id
        self._next = 0
        self._finished = False
        self._failed: StreamError | None = None

    @property
    def finished(self) -> bool:
        """True once the final chunk was opened."""
        return self._finished

    def _fail(self, error: StreamError) -> StreamError:
        self._failed = error
        return error

    def open(self, seq: int, final: bool, ciphertext: bytes) -> bytes:
        """Plaintext of the next chunk, or a StreamError (which also poisons the opener)."""
        if self._failed is not None:
            raise StreamError(f"stream already failed: {self._failed}")
        if self._finished:
            raise self._fail(OutOfOrderChunkError(f"chunk {seq} after the final chunk"))
        if seq < self._next:
            raise self._fail(OutOfOrderChunkError(f"duplicate or replayed chunk {seq}"))
        if seq > self._next:
            raise self._fail(OutOfOrderChunkError(f"chunk {seq} arrived, expected {self._next}"))
        try:
            plaintext = self._aead.decrypt(
                _nonce(seq), bytes(ciphertext), _aad(self._request_id, seq, bool(final))
            )
        except InvalidTag:
            raise self._fail(TamperedChunkError(f"chunk {seq} failed authentication")) from None
        self._next += 1
        self._finished = bool(final)
        return plaintext

    def open_chunk(self, chunk: StreamChunk) -> bytes:
        return self.open(chunk.seq, chunk.final, chunk.ciphertext)

    def end(self) -> None:
        """The transport says the stream is over: raise unless the final chunk was opened."""
        if self._failed is not None:
            raise StreamError(f"stream failed: {self._failed}")
        if not self._finished:
            raise self._fail(
                TruncatedStreamError(f"stream ended after {self._next} chunks without a final one")
            )
