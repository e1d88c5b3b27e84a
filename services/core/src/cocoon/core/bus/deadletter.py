"""Dead letters: a record a consumer cannot handle, kept byte for byte with the reason."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord

from cocoon.core import codec

DEAD_LETTER_RECORD = "cocoon.bus.DeadLetter"
REASON_HEADER = "cocoon-dlq-reason"
SOURCE_HEADER = "cocoon-dlq-source"


class RejectRecord(Exception):
    """Raise from a handler to dead-letter the current record (reason REJECTED) and carry on.

    For records that are well-formed but wrong for the business (a receipt signed by a key that
    is not the worker's attested one, a reference to an unknown account...).
    """


class InvalidValue(Exception):
    """The record decoded but its value is not acceptable (reason INVALID_VALUE)."""


class MissingValue(Exception):
    """A null value (tombstone) on a topic that is not compacted (reason MISSING_VALUE)."""


def reason_of(exc: BaseException) -> str:
    """The DeadLetterReason symbol for an exception raised while handling a record."""
    if isinstance(exc, codec.DecodeError):
        return exc.reason
    if isinstance(exc, RejectRecord):
        return "REJECTED"
    if isinstance(exc, InvalidValue):
        return "INVALID_VALUE"
    if isinstance(exc, MissingValue):
        return "MISSING_VALUE"
    return "UNKNOWN"


def dead_letter(
    record: ConsumerRecord, exc: BaseException, *, topic: str, group: str | None
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The encoded DeadLetter value and the headers for a dead-lettered `record`.

    `topic` is the logical (catalog) name of the source topic.
    """
    reason = reason_of(exc)
    headers = [(k, bytes(v) if v is not None else b"") for k, v in record.headers or ()]
    value = codec.encode(
        DEAD_LETTER_RECORD,
        {
            "source_topic": topic,
            "source_partition": record.partition,
            "source_offset": record.offset,
            "source_timestamp": record.timestamp if record.timestamp >= 0 else None,
            "consumer_group": group,
            "reason": reason,
            "error": f"{type(exc).__name__}: {exc}",
            "key": record.key,
            "value": record.value,
            "headers": [{"key": k, "value": v} for k, v in headers],
            "failed_at": datetime.now(UTC),
        },
    )
    source = f"{topic}/{record.partition}/{record.offset}".encode()
    kept = [(k, v) for k, v in headers if k not in (REASON_HEADER, SOURCE_HEADER)]
    return value, [*kept, (REASON_HEADER, reason.encode()), (SOURCE_HEADER, source)]
