"""timestamp-millis values as integers: fastavro and the generated models give datetimes."""

from __future__ import annotations

from datetime import UTC, datetime


def epoch_millis(value: datetime | int) -> int:
    """Unix milliseconds of a decoded timestamp-millis (a datetime; naive means UTC) or an int."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return round(value.timestamp() * 1000)
    return int(value)
