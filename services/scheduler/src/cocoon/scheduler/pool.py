"""The scheduler's live view of workers: attestation, health, load, speed and reputation.

Plain data and arithmetic, no Kafka: the scheduler's wiring feeds verdicts, heartbeats and
outcomes in, and asks `placement.choose_worker` where the next request goes. Times are
seconds on one monotonic-ish clock chosen by the caller (the wiring passes record timestamps).

Every change to a worker updates the indexes placement reads (index.py: the workers that could
serve each model, those with a free slot, by price; the mean duration per model), so nothing
here or in placement walks the whole pool on the request path. What only time changes (a lease's
first-chunk deadline passing, a worker falling silent, a verdict expiring) is kept as deadlines
(index.Deadlines), so the periodic checks cost what is due, not a pass over every lease or
worker either.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from cocoon.scheduler.index import Deadlines, MeanOfAverages, ModelIndex

# COCOON averages request time over an exponentially decayed 10-minute window.
DURATION_HALF_LIFE_S = 600.0
# Reputation forgets more slowly than speed, so one bad hour is not erased by one good minute.
REPUTATION_HALF_LIFE_S = 3600.0
HEARTBEAT_TTL_S = 15.0
# Expected duration of a worker with no history and no peers to learn from.
PRIOR_DURATION_S = 5.0
# Beta prior on the success rate: a new worker starts at 0.9 and moves with evidence.
PRIOR_SUCCESSES = 9.0
PRIOR_FAILURES = 1.0
# A receipt billing rejected is a signed claim that did not hold: worse than a failed request.
REJECTED_RECEIPT_WEIGHT = 5.0
# Floor so a very bad worker is heavily penalised but the score stays finite.
MIN_REPUTATION = 0.05
# Reputation moves slowly, so a worker whose requests fail fast would look idle and keep
# attracting work: each recent failure also multiplies its expected time by this much more,
# forgotten with a short half-life (the cooldown).
FAILURE_PENALTY = 2.0
FAILURE_COOLDOWN_HALF_LIFE_S = 30.0


class PoolError(ValueError):
    """An operation that contradicts the pool's state (unknown worker or lease, duplicate)."""


@dataclass
class DecayedAverage:
    """Ratio of two exponentially decayed sums: recent samples weigh more than old ones.

    Decaying numerator and denominator together keeps the average itself stable while idle;
    only the weight of old evidence shrinks, so new samples move it faster after a pause.
    """

    half_life: float
    total: float = 0.0
    weight: float = 0.0
    updated_at: float | None = None

    def _decay(self, now: float) -> None:
        if self.updated_at is not None and now > self.updated_at:
            factor = 0.5 ** ((now - self.updated_at) / self.half_life)
            self.total *= factor
            self.weight *= factor
        if self.updated_at is None or now > self.updated_at:
            self.updated_at = now

    def add(self, value: float, now: float, weight: float = 1.0) -> None:
        self._decay(now)
        self.total += value * weight
        self.weight += weight

    def value(self) -> float | None:
        return self.total / self.weight if self.weight > 1e-9 else None


@dataclass
class Reputation:
    """Decayed counts of good and bad outcomes; `score` is a Beta-smoothed success rate."""

    half_life: float = REPUTATION_HALF_LIFE_S
    successes: float = 0.0
    failures: float = 0.0
    updated_at: float | None = None

    def _decay(self, now: float) -> None:
        if self.updated_at is not None and now > self.updated_at:
            factor = 0.5 ** ((now - self.updated_at) / self.half_life)
            self.successes *= factor
            self.failures *= factor
        if self.updated_at is None or now > self.updated_at:
            self.updated_at = now

    def record(self, now: float, *, success: bool, weight: float = 1.0) -> None:
        self._decay(now)
        if success:
            self.successes += weight
        else:
            self.failures += weight

    def score(self) -> float:
        rate = (self.successes + PRIOR_SUCCESSES) / (
            self.successes + self.failures + PRIOR_SUCCESSES + PRIOR_FAILURES
        )
        return max(MIN_REPUTATION, rate)


@dataclass
class Cooldown:
    """Recent failures, decayed to the time of asking: `penalty` >= 1 multiplies a score."""

    half_life: float = FAILURE_COOLDOWN_HALF_LIFE_S
    failures: float = 0.0
    updated_at: float = 0.0

    def record(self, now: float, weight: float = 1.0) -> None:
        self.failures = self._decayed(now) + weight
        self.updated_at = max(self.updated_at, now)

    def penalty(self, now: float) -> float:
        return 1.0 + FAILURE_PENALTY * self._decayed(now) if self.failures else 1.0

    def _decayed(self, now: float) -> float:
        if now <= self.updated_at:
            return self.failures
        return self.failures * 0.5 ** ((now - self.updated_at) / self.half_life)


@dataclass
class WorkerState:
    """Everything placement needs to know about one worker."""

    worker_id: str
    models: frozenset[str]
    capacity: int
    coefficient: int  # price coefficient, 1000 = 1.0x (as in COCOON)
    last_heartbeat: float
    work_topic: str = ""
    enabled: bool = True  # False while the worker reports STARTING/DISABLED
    draining: bool = False
    reported_running: int = 0  # the worker's own count, from its last heartbeat
    # Requests the worker runs that are not our leases (another scheduler instance's, or ones
    # we took back that it still runs): what its last heartbeat reported beyond our leases.
    foreign: int = 0
    heartbeat_seq: int | None = None
    verdict_id: str | None = None
    verdict_expires_at: float | None = None  # only accepted verdicts are stored
    verdict_models: frozenset[str] = frozenset()
    leases: set[str] = field(default_factory=set)
    duration: DecayedAverage = field(
        default_factory=lambda: DecayedAverage(half_life=DURATION_HALF_LIFE_S)
    )
    reputation: Reputation = field(default_factory=Reputation)
    cooldown: Cooldown = field(default_factory=Cooldown)
    receipts_rejected: int = 0
    # When our leases on it ended lately: a heartbeat sent before one ended still counted it.
    released_at: deque[float] = field(default_factory=deque)
    # (models, coefficient, has a free slot) as last entered in the indexes; None = in none.
    indexed: tuple[frozenset[str], int, bool] | None = None
    # Found past its heartbeat's freshness / its verdict's expiry (no record says so): out of
    # the indexes until its next heartbeat / verdict.
    silent: bool = False
    verdict_lapsed: bool = False

    @property
    def running(self) -> int:
        # Our leases are authoritative for what we sent, the moment we send or free it; the
        # heartbeat only adds what the worker runs beyond them.
        return len(self.leases) + self.foreign

    def verdict_valid(self, now: float) -> bool:
        return self.verdict_expires_at is not None and self.verdict_expires_at > now

    def serves(self, model: str) -> bool:
        """Advertised by the worker AND allowed by its verdict."""
        return model in self.models and model in self.verdict_models


@dataclass(frozen=True)
class Lease:
    """A request placed on a worker, waiting for its first chunk until `first_chunk_deadline`."""

    request_id: str
    worker_id: str
    model: str
    attempt: int
    granted_at: float
    first_chunk_deadline: float
    started: bool = False  # first chunk seen: no longer re-placeable


class WorkerPool:
    """Workers by id, their verdicts, and the leases the scheduler granted on them."""

    def __init__(
        self,
        *,
        heartbeat_ttl: float = HEARTBEAT_TTL_S,
        prior_duration: float = PRIOR_DURATION_S,
        seed: int | None = None,
    ) -> None:
        self.heartbeat_ttl = heartbeat_ttl
        self.prior_duration = prior_duration
        self.rng = random.Random(seed)  # placement's samples; seeded for reproducible runs
        self._workers: dict[str, WorkerState] = {}
        # Verdicts may arrive before the first heartbeat (separate topics); keep them for later.
        self._pending_verdicts: dict[str, tuple[str, float, frozenset[str]]] = {}
        self._leases: dict[str, Lease] = {}
        self._indexes: dict[str, ModelIndex] = {}
        self._advertised: dict[str, int] = {}  # model -> workers advertising it
        self._durations: dict[str, MeanOfAverages] = {}  # model -> mean of workers' averages
        self._lease_deadlines = Deadlines()  # request id -> first-chunk deadline
        self._heartbeat_deadlines = Deadlines()  # worker id -> when it goes silent
        self._verdict_deadlines = Deadlines()  # worker id -> when its verdict expires
        self._silent: set[str] = set()  # silent workers whose leases are still to report
        self._orphans: set[str] = set()  # leases on workers removed while holding them
        self._started = 0  # leases that have seen their first chunk

    # ---- worker facts -------------------------------------------------------------------

    def heartbeat(
        self,
        worker_id: str,
        now: float,
        *,
        models: Iterable[str],
        capacity: int,
        coefficient: int,
        work_topic: str = "",
        enabled: bool = True,
        draining: bool = False,
        running: int = 0,
        seq: int | None = None,
    ) -> WorkerState:
        """Register or refresh a worker. A heartbeat with an older `seq` is ignored.

        `running` is the worker's count when it sent the heartbeat at `now`. Our leases granted
        by then, and those that ended after it, are requests it counted; only the rest is
        added to our leases (`foreign`), so a slot we freed since is free at once.
        """
        if capacity < 0 or coefficient < 0 or running < 0:
            raise PoolError("capacity, coefficient and running must be >= 0")
        state = self._workers.get(worker_id)
        if state is None:
            state = WorkerState(
                worker_id=worker_id,
                models=frozenset(),
                capacity=capacity,
                coefficient=coefficient,
                last_heartbeat=now,
            )
            self._workers[worker_id] = state
            pending = self._pending_verdicts.pop(worker_id, None)
            if pending is not None:
                state.verdict_id, state.verdict_expires_at, state.verdict_models = pending
                self._verdict_deadlines.arm(worker_id, pending[1])
        elif (
            seq is not None
            and state.heartbeat_seq is not None
            and seq <= state.heartbeat_seq
            and self.heartbeat_fresh(state, now)
        ):
            # A lower seq while the worker is alive is a reordered heartbeat; once it has gone
            # silent, a lower seq is a restarted worker process (seq restarts) and is accepted.
            return state
        self._advertise(state, frozenset(models))
        state.capacity = capacity
        state.coefficient = coefficient
        state.work_topic = work_topic
        state.enabled = enabled
        state.draining = draining
        state.reported_running = running
        state.foreign = max(0, running - self._ours_counted_at(state, now))
        state.heartbeat_seq = seq
        state.last_heartbeat = max(state.last_heartbeat, now)
        state.silent = False
        self._silent.discard(worker_id)
        self._heartbeat_deadlines.arm(worker_id, state.last_heartbeat + self.heartbeat_ttl)
        self._reindex(state)
        return state

    def _ours_counted_at(self, state: WorkerState, sent_at: float) -> int:
        """How many of our requests a heartbeat sent at `sent_at` may have counted."""
        while state.released_at and state.released_at[0] <= sent_at:
            state.released_at.popleft()  # ended before it was sent: not counted, nor later
        granted = sum(
            1
            for rid in state.leases
            if (lease := self._leases.get(rid)) is not None and lease.granted_at <= sent_at
        )
        return granted + len(state.released_at)

    def accept_verdict(
        self, worker_id: str, verdict_id: str, expires_at: float, models: Iterable[str]
    ) -> None:
        """Record an accepted (trusted, signature-checked) verdict; it replaces the previous one."""
        entry = (verdict_id, expires_at, frozenset(models))
        state = self._workers.get(worker_id)
        if state is None:
            self._pending_verdicts[worker_id] = entry
            return
        state.verdict_id, state.verdict_expires_at, state.verdict_models = entry
        state.verdict_lapsed = False
        self._verdict_deadlines.arm(worker_id, expires_at)
        self._reindex(state)

    def revoke_verdict(self, worker_id: str) -> None:
        """A rejected or withdrawn verdict: the worker gets no new work from now on."""
        self._pending_verdicts.pop(worker_id, None)
        state = self._workers.get(worker_id)
        if state is not None:
            state.verdict_id, state.verdict_expires_at = None, None
            state.verdict_models = frozenset()
            self._reindex(state)

    def set_draining(self, worker_id: str, draining: bool = True) -> None:
        state = self._get(worker_id)
        state.draining = draining
        self._reindex(state)

    def set_coefficient(self, worker_id: str, coefficient: int) -> None:
        """The price placement uses for this worker from now on (until it heartbeats another)."""
        state = self._get(worker_id)
        state.coefficient = coefficient
        self._reindex(state)

    def remove(self, worker_id: str) -> None:
        state = self._workers.pop(worker_id, None)
        self._pending_verdicts.pop(worker_id, None)
        if state is not None:
            self._unindex(state)
            self._advertise(state, frozenset())
            self._orphans.update(state.leases)  # reported by silent_leases: nobody runs them

    def receipt_rejected(self, worker_id: str, now: float) -> None:
        """Billing refused a usage receipt signed by this worker."""
        state = self._get(worker_id)
        state.receipts_rejected += 1
        state.reputation.record(now, success=False, weight=REJECTED_RECEIPT_WEIGHT)
        state.cooldown.record(now, weight=REJECTED_RECEIPT_WEIGHT)

    # ---- queries ------------------------------------------------------------------------

    def get(self, worker_id: str) -> WorkerState | None:
        return self._workers.get(worker_id)

    def workers(self, model: str | None = None) -> list[WorkerState]:
        """Workers in id order (deterministic), optionally only those advertising `model`."""
        return [
            self._workers[w]
            for w in sorted(self._workers)
            if model is None or model in self._workers[w].models
        ]

    def heartbeat_fresh(self, state: WorkerState, now: float) -> bool:
        return now - state.last_heartbeat <= self.heartbeat_ttl

    def placeable(self, state: WorkerState, model: str, now: float) -> bool:
        """Attested for `model`, alive, enabled and not draining (capacity and price aside)."""
        return (
            state.serves(model)
            and state.verdict_valid(now)
            and state.enabled
            and not state.draining
            and self.heartbeat_fresh(state, now)
        )

    def models(self, now: float) -> dict[str, int]:
        """Model -> number of placeable workers, for models with at least one.

        Once what lapsed by `now` is out of the indexes, an index's members are exactly the
        placeable workers, so this counts them without looking at any worker.
        """
        self._lapse(now)
        return {
            model: len(index.members)
            for model, index in sorted(self._indexes.items())
            if len(index.members)
        }

    def advertised(self, model: str) -> bool:
        """Some worker we know of advertises `model` (placeable or not)."""
        return model in self._advertised

    def index(self, model: str) -> ModelIndex:
        """Workers that could serve `model`, and those of them with a free slot (index.py)."""
        return self._indexes.get(model) or ModelIndex()

    def set_aside(self, state: WorkerState, now: float) -> None:
        """Out of every index until its next record: placement found its verdict expired or
        its heartbeat stale before the deadlines did (no record announces either)."""
        state.silent = not self.heartbeat_fresh(state, now)
        state.verdict_lapsed = not state.verdict_valid(now)
        self._reindex(state)

    def expected_duration(self, state: WorkerState, model: str) -> float:
        """The worker's decayed average duration; without history, the mean of its peers'."""
        own = state.duration.value()
        if own is not None:
            return own
        peers = self._durations.get(model)
        mean = peers.value() if peers is not None else None
        return mean if mean is not None else self.prior_duration

    # ---- leases -------------------------------------------------------------------------

    def grant(
        self,
        request_id: str,
        worker_id: str,
        model: str,
        now: float,
        lease_seconds: float,
        attempt: int = 1,
    ) -> Lease:
        if request_id in self._leases:
            raise PoolError(f"request {request_id} already holds a lease")
        state = self._get(worker_id)
        lease = Lease(
            request_id=request_id,
            worker_id=worker_id,
            model=model,
            attempt=attempt,
            granted_at=now,
            first_chunk_deadline=now + lease_seconds,
        )
        self._leases[request_id] = lease
        state.leases.add(request_id)
        self._lease_deadlines.arm(request_id, lease.first_chunk_deadline)
        if state.silent:
            self._silent.add(worker_id)  # granted anyway (e.g. by a test): report it silent
        self._reindex(state)
        return lease

    def restore(self, lease: Lease) -> None:
        """A lease another scheduler instance granted, taken over with its shard: it counts on
        its worker from its own `granted_at` (heartbeats since then count it) and keeps its
        first-chunk deadline. A worker not (or no longer) in the pool makes it an orphan, which
        `silent_leases` reports while that worker stays away."""
        if lease.request_id in self._leases:
            raise PoolError(f"request {lease.request_id} already holds a lease")
        self._leases[lease.request_id] = lease
        if lease.started:
            self._started += 1
        else:
            self._lease_deadlines.arm(lease.request_id, lease.first_chunk_deadline)
        state = self._workers.get(lease.worker_id)
        if state is None:
            self._orphans.add(lease.request_id)
            return
        state.leases.add(lease.request_id)
        if state.silent:
            self._silent.add(lease.worker_id)
        self._reindex(state)

    def lease(self, request_id: str) -> Lease | None:
        return self._leases.get(request_id)

    def lease_counts(self) -> tuple[int, int]:
        """(leases waiting for their first chunk, leases whose worker started answering)."""
        return len(self._leases) - self._started, self._started

    def first_chunk(self, request_id: str) -> Lease | None:
        """The worker started answering: the lease can no longer expire. Idempotent."""
        lease = self._leases.get(request_id)
        if lease is None or lease.started:
            return lease
        lease = replace(lease, started=True)
        self._leases[request_id] = lease
        self._started += 1
        return lease

    def finish(self, request_id: str, now: float, *, success: bool) -> Lease | None:
        """The request ended on its worker: free the slot, learn speed and reliability.

        Unknown ids return None, so a replayed outcome changes nothing.
        """
        lease = self._release(request_id, now)
        if lease is None:
            return None
        state = self._workers.get(lease.worker_id)
        if state is not None:
            if success:
                before = state.duration.value()
                state.duration.add(max(0.0, now - lease.granted_at), now)
                for model in state.models:
                    self._durations[model].replace(before, state.duration.value())
            else:
                state.cooldown.record(now)
            state.reputation.record(now, success=success)
        return lease

    def release(self, request_id: str, now: float) -> Lease | None:
        """Free the slot without learning anything (the client cancelled, not the worker)."""
        return self._release(request_id, now)

    def expired_leases(self, now: float) -> list[Lease]:
        """Leases with no first chunk by their deadline, oldest first: place them again.

        Costs what is due (finished and started leases leave as their deadlines pass), not a
        pass over every lease. An expired lease stays expired until it is taken back.
        """
        expired = []
        for request_id in self._lease_deadlines.due(now):
            lease = self._leases.get(request_id)
            if lease is None or lease.started:
                continue
            # Armed again either way: a request placed again under the same id may have been
            # due at its earlier attempt's deadline; an expired one stays so until taken back.
            self._lease_deadlines.arm(request_id, lease.first_chunk_deadline)
            if lease.first_chunk_deadline <= now:
                expired.append(lease)
        return sorted(expired, key=lambda le: (le.first_chunk_deadline, le.request_id))

    def silent_leases(self, now: float) -> list[Lease]:
        """Leases whose worker stopped heartbeating, by request id: a started stream cannot
        finish, an unstarted one should go elsewhere. Costs the silent workers, not the pool."""
        self._lapse(now)
        silent: list[Lease] = []
        for worker_id in list(self._silent):
            state = self._workers.get(worker_id)
            if state is None or not state.leases:
                self._silent.discard(worker_id)  # nothing (left) to report
                continue
            silent += (self._leases[rid] for rid in state.leases)
        self._orphans &= self._leases.keys()  # those taken back since are done
        for request_id in self._orphans:
            lease = self._leases[request_id]
            # Silent while its worker is gone or silent (it may be back under the same id).
            worker = self._workers.get(lease.worker_id)
            if worker is None or not self.heartbeat_fresh(worker, now):
                silent.append(lease)
        return sorted(silent, key=lambda le: le.request_id)

    def reclaim(self, request_id: str, now: float) -> Lease | None:
        """Take back an expired or orphaned lease; it counts against the worker's reputation."""
        return self.finish(request_id, now, success=False)

    def _lapse(self, now: float) -> None:
        """Take out of the indexes the workers whose heartbeat or verdict ran out by `now`."""
        rearm = []
        for worker_id in self._heartbeat_deadlines.due(now):
            state = self._workers.get(worker_id)
            if state is None:
                continue
            if self.heartbeat_fresh(state, now):
                rearm.append((worker_id, state.last_heartbeat + self.heartbeat_ttl))
            else:
                state.silent = True
                self._silent.add(worker_id)
                self._reindex(state)
        for worker_id, at in rearm:  # after the loop: one fresh at exactly `now` is due again
            self._heartbeat_deadlines.arm(worker_id, at)
        for worker_id in self._verdict_deadlines.due(now):
            state = self._workers.get(worker_id)
            if state is not None and state.verdict_expires_at is not None:
                if state.verdict_valid(now):  # replaced by a later verdict since it was armed
                    self._verdict_deadlines.arm(worker_id, state.verdict_expires_at)
                else:
                    state.verdict_lapsed = True
                    self._reindex(state)

    def _release(self, request_id: str, now: float) -> Lease | None:
        lease = self._leases.pop(request_id, None)
        if lease is not None and lease.started:
            self._started -= 1
        if lease is not None and (state := self._workers.get(lease.worker_id)) is not None:
            state.leases.discard(request_id)
            state.released_at.append(now)
            self._reindex(state)
        return lease

    # ---- indexes ------------------------------------------------------------------------

    def _advertise(self, state: WorkerState, models: frozenset[str]) -> None:
        """Move the worker's advertised models (and its duration) to `models`."""
        own = state.duration.value()
        for model in state.models - models:
            self._advertised[model] -= 1
            if not self._advertised[model]:
                del self._advertised[model]
            self._durations[model].replace(own, None)
        for model in models - state.models:
            self._advertised[model] = self._advertised.get(model, 0) + 1
            self._durations.setdefault(model, MeanOfAverages()).replace(None, own)
        state.models = models

    def _reindex(self, state: WorkerState) -> None:
        """Put the worker where it belongs in the placement indexes (time aside)."""
        eligible = (
            state.verdict_id is not None
            and state.enabled
            and not state.draining
            and not state.silent
            and not state.verdict_lapsed
        )
        models = state.models & state.verdict_models if eligible else frozenset()
        wanted = (models, state.coefficient, state.running < state.capacity) if models else None
        if wanted == state.indexed or state.worker_id not in self._workers:
            return
        self._unindex(state)
        if wanted is None:
            return
        for model in models:
            index = self._indexes.setdefault(model, ModelIndex())
            index.members.add(state.worker_id, state.coefficient)
            if wanted[2]:
                index.free.add(state.worker_id, state.coefficient)
        state.indexed = wanted

    def _unindex(self, state: WorkerState) -> None:
        if state.indexed is None:
            return
        models, coefficient, _ = state.indexed
        for model in models:
            index = self._indexes[model]
            index.members.discard(state.worker_id, coefficient)
            index.free.discard(state.worker_id, coefficient)
        state.indexed = None

    def _get(self, worker_id: str) -> WorkerState:
        state = self._workers.get(worker_id)
        if state is None:
            raise PoolError(f"unknown worker {worker_id}")
        return state
