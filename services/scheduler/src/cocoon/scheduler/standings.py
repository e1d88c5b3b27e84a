"""The scheduler's view of each worker, published for its owner (`scheduler.standings`).

A GPU owner cannot see the scheduler's memory, yet reputation decides how much work a worker
gets: `cocoon worker status` reads the latest record for its worker id. Records go out every
`standings_seconds` (10 s) for workers whose numbers moved, so an idle pool writes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cocoon.core.codec import models
from cocoon.scheduler.pool import WorkerState

# Decimals kept: changes below this do not make a new record (decay alone moves the counts).
PRECISION = 3


def standing(state: WorkerState, now: float, instance: str) -> models.WorkerStanding:
    reputation = state.reputation
    typical = state.duration.value()
    return models.WorkerStanding(
        worker_id=state.worker_id,
        reputation=round(reputation.score(), PRECISION),
        successes=round(reputation.successes, PRECISION),
        failures=round(reputation.failures, PRECISION),
        cooldown_penalty=round(state.cooldown.penalty(now), PRECISION),
        receipts_rejected=state.receipts_rejected,
        typical_seconds=None if typical is None else round(typical, PRECISION),
        scheduler_instance=instance,
        observed_at=datetime.fromtimestamp(now, UTC),
    )


class StandingsPublisher:
    """Which standings to send now: those that changed since this instance last sent them."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._sent: dict[str, tuple[object, ...]] = {}

    def due(self, workers: list[WorkerState], now: float) -> list[models.WorkerStanding]:
        records = []
        for state in workers:
            record = standing(state, now, self.instance)
            numbers = (
                record.reputation,
                record.failures,
                record.cooldown_penalty,
                record.receipts_rejected,
                record.typical_seconds,
                record.successes,
            )
            if self._sent.get(state.worker_id) != numbers:
                self._sent[state.worker_id] = numbers
                records.append(record)
        return records
