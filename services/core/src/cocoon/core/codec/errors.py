"""What can go wrong turning bytes into a record, as exception types a consumer can route on.

Every `DecodeError` carries a `reason`: the symbol of `cocoon.bus.DeadLetterReason` that a
dead-letter record of it gets, so the bus never has to map messages to reasons.
"""

from __future__ import annotations


class CodecError(ValueError):
    """Base of everything the codec raises."""


class EncodeError(CodecError):
    """A value does not fit the schema it was to be written with."""


class SchemaError(CodecError):
    """The schemas directory is inconsistent (bad file name, duplicate version, unknown record)."""


class DecodeError(CodecError):
    """Bytes that cannot be read as the expected record."""

    reason = "UNKNOWN"


class BadMagicError(DecodeError):
    """Not Avro single-object encoding at all (garbage, empty, or another wire format)."""

    reason = "BAD_MAGIC"


class UnknownSchemaError(DecodeError):
    """The writer's schema fingerprint is not one this code ships."""

    reason = "UNKNOWN_SCHEMA"

    def __init__(self, message: str, fingerprint: bytes) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint


class InvalidBodyError(DecodeError):
    """The header is fine but the Avro body is truncated, corrupt or has trailing bytes."""

    reason = "INVALID_BODY"


class WrongRecordError(DecodeError):
    """A valid record, but of another type than the reader expects."""

    reason = "WRONG_RECORD"

    def __init__(self, message: str, actual: str, expected: str) -> None:
        super().__init__(message)
        self.actual = actual
        self.expected = expected
