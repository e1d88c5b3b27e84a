"""timestamp-millis values as integers: fastavro and the generated models give datetimes."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_millis() -> int:
    """The wall clock as Unix milliseconds, the unit of every timestamp on the bus."""
    return int(time.time() * 1000)


def epoch_millis(value: datetime | int) -> int:
    """Unix milliseconds of a decoded timestamp-millis (a datetime; naive means UTC) or an int.

    Anything else (a bool, a float, a string, None) raises TypeError: a signature covers these
    integers, so nothing is guessed."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return round(value.timestamp() * 1000)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"timestamp {value!r} is not a time")
