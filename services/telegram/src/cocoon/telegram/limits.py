"""Per-user limits: a request rate (token bucket) and a daily spend cap.

The cap counts tokens (prompt + completion, as the gateway reports them): the charge in nanoTON
is decided by billing from the worker's signed receipt, after the answer, and tokens are what it
is proportional to at a given price.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class UserLimits:
    def __init__(
        self,
        per_minute: int,
        daily_token_cap: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.per_minute = per_minute
        self.daily_token_cap = daily_token_cap
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}
        self._spent: dict[int, tuple[int, int]] = {}  # user -> (day number, tokens)

    def retry_after(self, user_id: int) -> float | None:
        """None if the user may send a request now (and counts it), else seconds to wait."""
        now = self._clock()
        bucket = self._buckets.get(user_id) or _Bucket(float(self.per_minute), now)
        bucket.tokens = min(
            float(self.per_minute), bucket.tokens + (now - bucket.updated) * self.per_minute / 60
        )
        bucket.updated = now
        self._buckets[user_id] = bucket
        if bucket.tokens < 1:
            return (1 - bucket.tokens) * 60 / self.per_minute
        bucket.tokens -= 1
        return None

    def _today(self) -> int:
        return int(self._clock() // 86_400)

    def spent_today(self, user_id: int) -> int:
        day, spent = self._spent.get(user_id, (self._today(), 0))
        return spent if day == self._today() else 0

    def over_daily_cap(self, user_id: int) -> bool:
        return self.daily_token_cap > 0 and self.spent_today(user_id) >= self.daily_token_cap

    def record_usage(self, user_id: int, tokens: int) -> None:
        self._spent[user_id] = (self._today(), self.spent_today(user_id) + tokens)
