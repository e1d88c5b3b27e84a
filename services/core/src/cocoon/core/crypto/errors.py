"""Errors raised by the crypto envelopes; callers catch `CryptoError` to treat them all alike."""

from __future__ import annotations


class CryptoError(Exception):
    """Any failure to seal, open, sign or verify."""


class CanonicalError(CryptoError, TypeError):
    """A value that has no canonical encoding (floats, non-str keys, unknown types)."""


class OpenError(CryptoError):
    """A sealed request that cannot be opened with these keys and this context."""


class StreamError(CryptoError):
    """A response stream that is not exactly what the worker sealed."""


class TamperedChunkError(StreamError):
    """A chunk whose ciphertext, sequence number or final flag was altered (AEAD check failed)."""


class OutOfOrderChunkError(StreamError):
    """A chunk that is a duplicate, arrives early (a gap) or follows the final chunk."""


class TruncatedStreamError(StreamError):
    """The stream ended without its final chunk."""


class SignatureError(CryptoError):
    """A signature that does not verify, or a key that is not the expected one."""
