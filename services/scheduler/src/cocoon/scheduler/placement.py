"""Where the next request goes: a function of the pool, the request and the time.

Filters, in this order (each failing stage has its own reason, so the client learns why):

1. the model is advertised by some worker            else UNKNOWN_MODEL
2. an unexpired accepted verdict that lists the model, a fresh heartbeat, enabled, not
   draining, not excluded (already tried for this request)  else NO_ATTESTED_WORKER
3. capacity left (running < capacity)                 else ALL_BUSY
4. price coefficient <= the client's max_coefficient  else PRICE_CAP_TOO_LOW, with the lowest
   coefficient among the workers that would otherwise take it (as COCOON reports)

Among the survivors, the lowest score wins:

    score = (running + 1) x expected_duration x cooldown / reputation

`running` is our own leases on the worker plus what its last heartbeat reported beyond them
(pool.py). `expected_duration` is the worker's exponentially decayed average request time
(10-minute half-life); without history, the running mean of its model peers' averages, else a
fixed prior. Using running + 1 (COCOON uses running) makes an idle fast worker beat an idle slow
one. `reputation` in [0.05, 1] is a Beta-smoothed, decayed success rate in which a receipt
rejected by billing counts as five failures: a worker at 0.5 looks twice as slow as a perfect
one. `cooldown` is 1 + 2 per recent failure, halving every 30 s: a worker whose requests fail
fast looks idle, and without it would keep attracting work until its reputation caught up.
Ties go to the lower coefficient, then the lower worker id.

Cost does not grow with the pool: the pool keeps, per model, the workers that could take a
request and those with a free slot, by price (index.py). When more than `EXACT_MAX` free
workers are within the price cap, `SAMPLE` of them are drawn at random and the best of those
wins (the power of d choices: with d >= 2 the load stays nearly as even as a full scan's, see
docs/performance.md); otherwise all of them are scored, as a full scan would. A worker found
with an expired verdict or a stale heartbeat is set aside until its next record. Only when no
drawn worker can be used (all excluded or lapsed) are the free workers walked, cheapest first,
which also yields the reason when there is none.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum, auto

from cocoon.scheduler.pool import WorkerPool, WorkerState

# At most this many free workers within the price cap: score them all (exact, deterministic).
EXACT_MAX = 8
# More than that: score this many drawn at random.
SAMPLE = 3
# Draws per decision before falling back to walking the free workers (excluded or lapsed ones
# are drawn and skipped; lapsed ones leave the index, so the walk is rare and cheap overall).
MAX_DRAWS = 4 * SAMPLE


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


# (pool, model, max_coefficient, now, exclude=...) -> a worker or why none: choose_worker's shape.
ChooseWorker = Callable[..., "Placement | NoPlacement"]


def score(pool: WorkerPool, state: WorkerState, model: str, now: float) -> tuple[float, float]:
    """(expected completion seconds, score) of sending one more request to `state`."""
    expected = (state.running + 1) * pool.expected_duration(state, model)
    return expected, expected * state.cooldown.penalty(now) / state.reputation.score()


def choose_worker(
    pool: WorkerPool,
    model: str,
    max_coefficient: int,
    now: float,
    exclude: Collection[str] = frozenset(),
    only: Collection[str] = frozenset(),
) -> Placement | NoPlacement:
    """The best of a few placeable workers for one request, or why there is none.

    `exclude`: workers already tried for this request. `only`, when not empty: the workers the
    request may go to (e.g. the ones a client sealed it for); they are all scored.
    """
    if not pool.advertised(model):
        return NoPlacement(NoPlacementReason.UNKNOWN_MODEL, model)
    if only:
        return _exact(pool, model, max_coefficient, now, _only(pool, model, only), exclude)
    index = pool.index(model)
    if len(index.members) <= EXACT_MAX:
        members = _states(pool, index.members.ascending())
        return _exact(pool, model, max_coefficient, now, members, exclude)

    def usable(worker_id: str) -> WorkerState | None:
        state = pool.get(worker_id)
        if state is None or worker_id in exclude:
            return None
        if not pool.placeable(state, model, now):
            pool.set_aside(state, now)  # lapsed: only time changed, and no record says so
            return None
        return state

    affordable = index.free.count_upto(max_coefficient)
    sampling = affordable > EXACT_MAX
    drawn: dict[str, WorkerState] = {}
    for _ in range(MAX_DRAWS if sampling else 0):
        worker_id = index.free.draw_upto(max_coefficient, affordable, pool.rng)
        if worker_id not in drawn and (state := usable(worker_id)) is not None:
            drawn[worker_id] = state
            if len(drawn) == SAMPLE:
                break
        affordable = index.free.count_upto(max_coefficient)  # set-asides shrink it
        if not affordable:
            break
    if not drawn:  # few within the cap, or every draw missed: walk them, cheapest first
        for _, worker_id in index.free.upto(max_coefficient):
            if (state := usable(worker_id)) is not None:
                drawn[worker_id] = state
                if sampling and len(drawn) == SAMPLE:
                    break
    if drawn:
        return _best(pool, model, now, drawn.values())
    # Nobody within the cap can take it now: say why, as the full scan would.
    if not any(usable(worker_id) for _, worker_id in index.members.ascending()):
        return NoPlacement(NoPlacementReason.NO_ATTESTED_WORKER, model)
    cheapest = next((price for price, w in index.free.ascending() if usable(w)), None)
    if cheapest is None:
        return NoPlacement(NoPlacementReason.ALL_BUSY, model)
    if any(usable(worker_id) for _, worker_id in index.members.upto(max_coefficient)):
        # A worker at this price exists but is busy: wait for it, as the exact path does.
        return NoPlacement(NoPlacementReason.ALL_BUSY, model)
    return NoPlacement(NoPlacementReason.PRICE_CAP_TOO_LOW, model, min_coefficient=cheapest)


def _states(pool: WorkerPool, members: Iterable[tuple[int, str]]) -> list[WorkerState]:
    return [state for _, worker_id in members if (state := pool.get(worker_id)) is not None]


def _only(pool: WorkerPool, model: str, only: Collection[str]) -> Iterator[WorkerState]:
    for worker_id in sorted(only):
        state = pool.get(worker_id)
        if state is not None and model in state.models:
            yield state


def _exact(
    pool: WorkerPool,
    model: str,
    max_coefficient: int,
    now: float,
    candidates: Iterable[WorkerState],
    exclude: Collection[str],
) -> Placement | NoPlacement:
    """Every filter over every candidate: for a few workers, the exact answer."""
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
    return _best(pool, model, now, affordable)


def _best(pool: WorkerPool, model: str, now: float, candidates: Iterable[WorkerState]) -> Placement:
    best: tuple[float, int, str] | None = None
    chosen: Placement | None = None
    for w in candidates:
        expected, s = score(pool, w, model, now)
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
