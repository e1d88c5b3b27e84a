"""Where the next request goes: a pure function of the pool, the request and the time.

Filters, in this order (each failing stage has its own reason, so the client learns why):

1. the model is advertised by some worker            else UNKNOWN_MODEL
2. an unexpired accepted verdict that lists the model, a fresh heartbeat, enabled, not
   draining, not excluded (already tried for this request)  else NO_ATTESTED_WORKER
3. capacity left (running < capacity)                 else ALL_BUSY
4. price coefficient <= the client's max_coefficient  else PRICE_CAP_TOO_LOW, with the lowest
   coefficient among the workers that would otherwise take it (as COCOON reports)

Among the survivors, the lowest score wins:

    score = (running + 1) x expected_duration / reputation

`expected_duration` is the worker's exponentially decayed average request time (10-minute
half-life); without history, the mean of its model peers' averages, else a fixed prior. Using
running + 1 (COCOON uses running) makes an idle fast worker beat an idle slow one.
`reputation` in [0.05, 1] is a Beta-smoothed, decayed success rate in which a receipt rejected
by billing counts as five failures: a worker at 0.5 looks twice as slow as a perfect one.
Ties go to the lower coefficient, then the lower worker id, so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum, auto

from cocoon.scheduler.pool import WorkerPool, WorkerState


class NoPlacementReason(Enum):
    """Why `choose_worker` found no worker (internal: the dispatcher maps it to an ErrorCode)."""

    UNKNOWN_MODEL = auto()
    NO_ATTESTED_WORKER = auto()
    ALL_BUSY = auto()
    PRICE_CAP_TOO_LOW = auto()


@dataclass(frozen=True)
class Placement:
    worker_id: str
    verdict_id: str
    work_topic: str
    coefficient: int
    expected_seconds: float  # (running + 1) x expected duration, before the reputation factor
    score: float


@dataclass(frozen=True)
class NoPlacement:
    reason: NoPlacementReason
    model: str
    min_coefficient: int | None = None  # set for PRICE_CAP_TOO_LOW

    def message(self) -> str:
        match self.reason:
            case NoPlacementReason.UNKNOWN_MODEL:
                return f"unknown model {self.model!r}"
            case NoPlacementReason.NO_ATTESTED_WORKER:
                return f"no attested worker is available for model {self.model!r}"
            case NoPlacementReason.ALL_BUSY:
                return f"all workers for model {self.model!r} are busy"
            case NoPlacementReason.PRICE_CAP_TOO_LOW:
                return (
                    f"no worker for model {self.model!r} accepts this max_coefficient; "
                    f"the lowest available is {self.min_coefficient}"
                )


def score(pool: WorkerPool, state: WorkerState, model: str) -> tuple[float, float]:
    """(expected completion seconds, score) of sending one more request to `state`."""
    expected = (state.running + 1) * pool.expected_duration(state, model)
    return expected, expected / state.reputation.score()


def choose_worker(
    pool: WorkerPool,
    model: str,
    max_coefficient: int,
    now: float,
    exclude: Collection[str] = frozenset(),
) -> Placement | NoPlacement:
    candidates = pool.workers(model)
    if not candidates:
        return NoPlacement(NoPlacementReason.UNKNOWN_MODEL, model)
    ready = [w for w in candidates if w.worker_id not in exclude and pool.placeable(w, model, now)]
    if not ready:
        return NoPlacement(NoPlacementReason.NO_ATTESTED_WORKER, model)
    free = [w for w in ready if w.running < w.capacity]
    if not free:
        return NoPlacement(NoPlacementReason.ALL_BUSY, model)
    affordable = [w for w in free if w.coefficient <= max_coefficient]
    if not affordable and any(w.coefficient <= max_coefficient for w in ready):
        # A worker at this price exists but is busy: wait for it, as for any busy pool.
        return NoPlacement(NoPlacementReason.ALL_BUSY, model)
    if not affordable:
        return NoPlacement(
            NoPlacementReason.PRICE_CAP_TOO_LOW,
            model,
            min_coefficient=min(w.coefficient for w in free),
        )
    best: tuple[float, int, str] | None = None
    chosen: Placement | None = None
    for w in affordable:
        expected, s = score(pool, w, model)
        key = (s, w.coefficient, w.worker_id)
        if best is None or key < best:
            best = key
            assert w.verdict_id is not None  # placeable implies an accepted verdict
            chosen = Placement(
                worker_id=w.worker_id,
                verdict_id=w.verdict_id,
                work_topic=w.work_topic,
                coefficient=w.coefficient,
                expected_seconds=expected,
                score=s,
            )
    assert chosen is not None
    return chosen
