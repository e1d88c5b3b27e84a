"""What the scheduler does with each record and each tick: plain state, no Kafka.

The wiring (service.py) feeds verdicts, heartbeats, granted requests, reservations, first chunks
and outcomes in,
calls `tick` periodically, and sends whatever records come back (`Assignment` and `Outcome`
models). Every method is synchronous, so one call is atomic on the event loop, and idempotent:
Kafka delivers at least once and a replayed record must not place a request twice.

A request's life:

    PENDING --placed--> LEASED --first chunk--> STARTED --outcome--> DONE
       ^                  |                        |
       +--lease expired---+                        +--worker silent--> DONE (WORKER_LOST)
    PENDING --no worker by the wait's end--> DONE (FAILED no_worker / lease_expired)
    PENDING --every worker above the price cap--> DONE (FAILED price_cap, at once)

Waiting requests are queued per model, oldest first, and woken by what can let them in: a slot
freed on a worker of their model (an outcome, a lease taken back) or a worker that heartbeats
with room. A wake places from the head of the queue and stops at the first request that finds
every worker busy, so an event costs the placements it makes plus one, not a pass over every
waiting request. The tick looks again at each waiting request about once a second
(`RECHECK_SECONDS`): to end the ones whose wait ran out, and to place the ones a verdict or a
registry price let in (those records wake nobody; the next heartbeat would, too). Those looks
are deadlines (index.Deadlines), as are the pool's leases and workers' liveness, so a tick costs
what is due, not a pass over every waiting request, lease or worker.

Several instances (docs/architecture.md, "Several scheduler instances"): each request belongs to
a shard, the partition number it was admitted from, and only the instance owning the shard keeps
it. Every change of what a new owner would need (queued, placed, started, ended) marks the
request in `changes`; the wiring writes those to the `scheduler.leases` changelog before the
records the change produced. `drop_shards` forgets the unended requests of shards another
instance takes; `recover` takes them back from their changelog records.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum

from cocoon.core.codec import models
from cocoon.core.contracts import ErrorCode, work_topic
from cocoon.core.worker_records import SCHEDULER_REPORTER
from cocoon.scheduler.index import Deadlines
from cocoon.scheduler.placement import ChooseWorker, NoPlacement, NoPlacementReason, choose_worker
from cocoon.scheduler.pool import Lease, WorkerPool

log = logging.getLogger(__name__)

REPORTED_BY = SCHEDULER_REPORTER  # outcomes no worker signs (cocoon.core.worker_records)
# A waiting request is looked at again this often even if nothing woke it (its wait may run out,
# or its workers lapse, which no record announces).
RECHECK_SECONDS = 1.0
# First chunks of other instances' requests kept for a takeover: at 1,000 requests a second,
# the last 100 s, well beyond a takeover (docs/architecture.md, "Several scheduler instances").
STARTS_REMEMBERED = 100_000


class Phase(StrEnum):
    PENDING = "pending"  # waiting for a placeable worker
    LEASED = "leased"  # assigned, no first chunk yet
    STARTED = "started"  # first chunk seen: only an outcome or a lost worker ends it
    DONE = "done"


@dataclass(frozen=True)
class Timing:
    lease_seconds: float = 10.0
    no_worker_wait_seconds: float = 5.0
    # A request whose workers are all busy is queued, not refused: it waits this long (within
    # its deadline) for a slot; no worker at all still fails after no_worker_wait_seconds.
    busy_wait_seconds: float = 60.0
    max_attempts: int = 3
    # Finished requests are remembered this long so a replayed reservation is not placed again.
    remember_seconds: float = 900.0


@dataclass
class Request:
    request_id: str
    model: str
    max_coefficient: int
    gateway_id: str
    deadline: float
    received_at: float
    wait_until: float
    busy_until: float = 0.0  # how long it may wait while every worker for it is busy
    attempt: int = 0  # last attempt assigned; 0 before the first
    worker_id: str = ""  # worker of the last attempt
    tried: set[str] = field(default_factory=set)
    # A client-sealed request opens only on the workers the client wrapped its key to.
    candidates: frozenset[str] = frozenset()
    phase: Phase = Phase.PENDING
    done_at: float | None = None
    last_miss: NoPlacement | None = None
    check_at: float = 0.0  # while PENDING: when the tick looks at it again
    trace: object | None = None  # the wiring's trace context, so re-placements join the trace
    shard: int = 0  # the partition it was admitted from: the instance owning it keeps it
    logged: bool = False  # written to the changelog (so its end is written too)


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class Dispatcher:
    def __init__(
        self,
        pool: WorkerPool,
        timing: Timing | None = None,
        choose: ChooseWorker = choose_worker,
    ) -> None:
        self.pool = pool
        self.timing = timing or Timing()
        self.choose = choose  # the placement policy (the replay bench compares others)
        self.requests: dict[str, Request] = {}
        # Waiting requests per model; insertion order = arrival order.
        self._queues: dict[str, dict[str, Request]] = {}
        self._rechecks = Deadlines()  # waiting request id -> its check_at
        self._finished: deque[tuple[float, str]] = deque()  # (done_at, id), oldest first
        # Every model a verdict or heartbeat ever named: a model outside it fails at once (404).
        self.known_models: set[str] = set()
        # Price coefficients from the registry (`worker:<id>` entries). They win over what a
        # worker's heartbeat says: billing charges at the registry's and refuses other receipts.
        self.registry_coefficients: dict[str, int] = {}
        # The Ed25519 key of each worker's accepted verdict and when that verdict expires: only
        # heartbeats and outcomes signed by it are believed (cocoon.core.worker_records).
        self._signing_keys: dict[str, tuple[bytes, float]] = {}
        # Requests whose owned state changed since the wiring last wrote the changelog.
        self.changes: dict[str, Request] = {}
        # First chunks of requests another instance owns (request id -> attempt), newest last:
        # a lease taken over is started if its owner saw its first chunk but died before
        # writing it down, or the chunk came while the shard was between owners.
        self._started_elsewhere: dict[str, int] = {}

    # ---- worker facts -------------------------------------------------------------------

    def on_verdict(self, worker_id: str, verdict: models.Verdict | None, accepted: bool) -> None:
        """`accepted`: TRUSTED and its signature checked (see verdicts.py); None = tombstone."""
        if verdict is not None:
            self.known_models.update(verdict.models)
        if verdict is not None and accepted and verdict.signing_key:
            expires_at = verdict.expires_at.timestamp()
            self._signing_keys[worker_id] = (bytes(verdict.signing_key), expires_at)
            self.pool.accept_verdict(worker_id, verdict.verdict_id, expires_at, verdict.models)
            return
        self._signing_keys.pop(worker_id, None)
        self.pool.revoke_verdict(worker_id)
        state = self.pool.get(worker_id)
        if verdict is None and state is not None and not state.leases:
            self.pool.remove(worker_id)  # withdrawn and idle: nothing left to track

    def signing_key(self, worker_id: str, now: float) -> bytes | None:
        """The key of the worker's accepted, unexpired verdict (None: nothing vouches for it)."""
        found = self._signing_keys.get(worker_id)
        if found is None or found[1] <= now:
            return None
        return found[0]

    def on_registry_coefficient(self, worker_id: str, coefficient: int | None) -> None:
        """The registry's coefficient for a worker (None: it has no entry any more)."""
        if coefficient is None:
            self.registry_coefficients.pop(worker_id, None)
            return
        self.registry_coefficients[worker_id] = coefficient
        if self.pool.get(worker_id) is not None:
            self.pool.set_coefficient(worker_id, coefficient)  # until its next heartbeat

    def on_heartbeat(self, heartbeat: models.Heartbeat, now: float) -> list:
        self.known_models.update(heartbeat.models)
        coefficient = self.registry_coefficients.get(heartbeat.worker_id, heartbeat.coefficient)
        if coefficient != heartbeat.coefficient:
            log.debug(
                "worker %s heartbeats coefficient %d, registry says %d",
                heartbeat.worker_id,
                heartbeat.coefficient,
                coefficient,
            )
        state = self.pool.heartbeat(
            heartbeat.worker_id,
            now,
            models=heartbeat.models,
            capacity=heartbeat.max_active_requests,
            coefficient=coefficient,
            work_topic=heartbeat.work_topic,
            enabled=heartbeat.state in ("READY", "DRAINING"),
            draining=heartbeat.state == "DRAINING",
            running=max(0, heartbeat.active_requests),
            seq=heartbeat.seq,
        )
        if state.running >= state.capacity:
            return []
        # A worker with room: requests waiting for its models need not wait for the next tick.
        out: list = []
        for model in state.models & self._queues.keys():
            out += self._wake(model, now)
        return out

    # ---- requests -----------------------------------------------------------------------

    def on_request(self, request: models.InferenceRequest, now: float, shard: int = 0) -> list:
        """Place a request the gateway admitted against an admission grant at once: its hold is
        carved out of funds billing already holds. Any other request waits for its reservation."""
        if request.grant_id is None:
            return []
        return self._admit(request, now, shard)

    def on_reservation(self, reservation: models.Reservation, now: float, shard: int = 0) -> list:
        if reservation.status == "HELD":
            return self._admit(reservation, now, shard)
        # REJECTED: the gateway answers 402. A granted request billing could not fund after all
        # (a gateway bug) is taken back, and remembered so a late copy of it is not placed.
        request = self.requests.get(reservation.request_id)
        if request is None:
            self._done(self._track(reservation, now), now)
            return []
        if request.phase is Phase.DONE:
            return []
        self._done(request, now)
        if self.pool.release(request.request_id, now) is None:
            return []
        return self._wake(request.model, now)  # its slot is free again

    def _admit(
        self, admitted: models.InferenceRequest | models.Reservation, now: float, shard: int
    ) -> list:
        if admitted.request_id in self.requests:
            return []  # a duplicate, or both the granted request and its reservation
        if admitted.deadline_at.timestamp() <= now:
            # Replayed after its deadline (e.g. a first start reading old records): the
            # gateway has answered 504 and reports the outcome. Not stored: a replay of it is
            # skipped by the same rule, and old records must not fill memory.
            return []
        request = self._track(admitted, now)
        request.shard = shard
        self._queue(request)
        return self._try_place(request, now)

    def _track(self, admitted: models.InferenceRequest | models.Reservation, now: float) -> Request:
        deadline = admitted.deadline_at.timestamp()
        request = Request(
            request_id=admitted.request_id,
            model=admitted.model,
            max_coefficient=admitted.max_coefficient,
            gateway_id=admitted.gateway_id,
            deadline=deadline,
            received_at=now,
            wait_until=min(now + self.timing.no_worker_wait_seconds, deadline),
            busy_until=min(now + self.timing.busy_wait_seconds, deadline),
            candidates=frozenset(admitted.candidates),
        )
        self.requests[request.request_id] = request
        return request

    def on_first_chunk(self, request_id: str, attempt: int, seq: int) -> bool:
        """True when this chunk started a leased attempt (it can no longer expire)."""
        request = self.requests.get(request_id)
        if seq == 0 and request is None:
            self._remember_start(request_id, attempt)
        if seq != 0 or request is None or request.phase is not Phase.LEASED:
            return False
        if attempt != request.attempt:
            return False  # a superseded attempt's worker woke up late; its lease is gone
        self.pool.first_chunk(request_id)
        request.phase = Phase.STARTED
        self._changed(request)
        return True

    def on_receipt_rejected(self, worker_id: str, now: float) -> None:
        if self.pool.get(worker_id) is not None:
            self.pool.receipt_rejected(worker_id, now)

    def on_outcome(self, outcome: models.Outcome, now: float) -> list:
        if outcome.reported_by == REPORTED_BY:
            return []  # our own verdict on the request, read back
        request = self.requests.get(outcome.request_id)
        if request is None or request.phase is Phase.DONE or outcome.attempt != request.attempt:
            return []  # unknown, finished, or about an attempt we already took back
        lease = self.pool.lease(outcome.request_id)
        if lease is not None and lease.attempt == outcome.attempt:
            if outcome.status == "CANCELLED":
                # The client left: not the worker's doing.
                self.pool.release(outcome.request_id, now)
            else:
                self.pool.finish(outcome.request_id, now, success=outcome.status == "SUCCEEDED")
        self._done(request, now)
        # A slot just freed up: a request waiting for capacity need not wait for the next tick.
        return self._wake(request.model, now)

    # ---- time ---------------------------------------------------------------------------

    def tick(self, now: float) -> list:
        """Expire leases, report lost workers, retry or fail waiting requests, forget old ones."""
        out: list = []
        for lease in self.pool.expired_leases(now):
            out += self._take_back(lease, now, ErrorCode.LEASE_EXPIRED)
        for lease in self.pool.silent_leases(now):
            if lease.started:
                out += self._worker_lost(lease, now)
            else:
                # Nothing was streamed yet, so the request can go elsewhere without waiting
                # for its lease to run out.
                out += self._take_back(lease, now, ErrorCode.LEASE_EXPIRED)
        for request_id in self._rechecks.due(now):
            request = self.requests.get(request_id)
            if request is None or request.phase is not Phase.PENDING:
                continue  # placed or ended since
            if request.check_at > now:  # a wake looked at it since: its next look is later
                self._rechecks.arm(request_id, request.check_at)
            else:
                out += self._try_place(request, now)
        self._forget(now)
        return out

    # ---- internals ----------------------------------------------------------------------

    def _queue(self, request: Request) -> None:
        request.phase = Phase.PENDING
        self._queues.setdefault(request.model, {})[request.request_id] = request
        self._changed(request)

    def _changed(self, request: Request) -> None:
        self.changes[request.request_id] = request

    def _unqueue(self, request: Request) -> None:
        queue = self._queues.get(request.model)
        if queue is not None and queue.pop(request.request_id, None) is not None and not queue:
            del self._queues[request.model]

    def _wake(self, model: str, now: float) -> list:
        """Place waiting requests for `model`, oldest first, until every worker is busy."""
        out: list = []
        for request in list(self._queues.get(model, {}).values()):
            if request.phase is not Phase.PENDING:
                continue  # placed or ended by an earlier step of this wake
            out += self._try_place(request, now)
            miss = request.last_miss
            busy = miss is not None and miss.reason is NoPlacementReason.ALL_BUSY
            if request.phase is not Phase.LEASED and busy:
                break  # no slot left for anyone behind it either
        return out

    def _try_place(self, request: Request, now: float) -> list:
        choice = self.choose(
            self.pool,
            request.model,
            request.max_coefficient,
            now,
            exclude=request.tried,
            only=request.candidates,
        )
        if isinstance(choice, NoPlacement):
            request.last_miss = choice
            if request.attempt == 0 and request.model not in self.known_models:
                return [self._fail(request, now, ErrorCode.UNKNOWN_MODEL)]
            if choice.reason is NoPlacementReason.PRICE_CAP_TOO_LOW and request.attempt == 0:
                # Every worker for the model costs more than the client accepts: waiting would
                # not change that, so say so at once with the lowest price on offer.
                return [self._fail(request, now, ErrorCode.PRICE_CAP)]
            busy = choice.reason is NoPlacementReason.ALL_BUSY
            gives_up_at = request.busy_until if busy else request.wait_until
            if now >= gives_up_at:
                return [self._fail(request, now, self._miss_code(request))]
            request.check_at = min(now + RECHECK_SECONDS, gives_up_at)
            self._rechecks.arm(request.request_id, request.check_at)
            return []
        request.attempt += 1
        request.worker_id = choice.worker_id
        request.tried.add(choice.worker_id)
        request.phase = Phase.LEASED
        self._unqueue(request)
        self._changed(request)
        lease = self.pool.grant(
            request.request_id,
            choice.worker_id,
            request.model,
            now,
            self.timing.lease_seconds,
            attempt=request.attempt,
        )
        return [
            models.Assignment(
                assignment_id=f"{request.request_id}:{request.attempt}",
                request_id=request.request_id,
                attempt=request.attempt,
                worker_id=choice.worker_id,
                model=request.model,
                work_topic=choice.work_topic or work_topic(choice.worker_id),
                verdict_id=choice.verdict_id,
                coefficient=choice.coefficient,
                gateway_id=request.gateway_id,
                lease_expires_at=_ts(lease.first_chunk_deadline),
                assigned_at=_ts(now),
            )
        ]

    def _miss_code(self, request: Request) -> ErrorCode:
        if request.attempt > 0:
            return ErrorCode.LEASE_EXPIRED  # it was placed, but nobody ever answered
        miss = request.last_miss
        if miss is not None and miss.reason is NoPlacementReason.PRICE_CAP_TOO_LOW:
            return ErrorCode.PRICE_CAP
        return ErrorCode.NO_WORKER

    def _take_back(self, lease: Lease, now: float, code: ErrorCode) -> list:
        self.pool.reclaim(lease.request_id, now)
        out: list = []
        request = self.requests.get(lease.request_id)
        if request is None or request.phase is Phase.DONE:
            pass
        elif request.attempt >= self.timing.max_attempts or now >= request.deadline:
            out.append(self._fail(request, now, code))
        else:
            self._queue(request)
            request.wait_until = min(now + self.timing.no_worker_wait_seconds, request.deadline)
            request.busy_until = min(now + self.timing.busy_wait_seconds, request.deadline)
            out += self._try_place(request, now)
        return out + self._wake(lease.model, now)  # the slot it held is free for others

    def _worker_lost(self, lease: Lease, now: float) -> list:
        self.pool.reclaim(lease.request_id, now)
        request = self.requests.get(lease.request_id)
        if request is None or request.phase is Phase.DONE:
            return []
        return [self._fail(request, now, ErrorCode.WORKER_LOST, status="WORKER_LOST")]

    def _fail(
        self,
        request: Request,
        now: float,
        code: ErrorCode,
        status: models.OutcomeStatusSymbol = "FAILED",
    ) -> models.Outcome:
        self._done(request, now)
        log.info(
            "request %s ends %s (%s) after %d attempt(s)",
            request.request_id,
            status,
            code,
            request.attempt,
        )
        return models.Outcome(
            request_id=request.request_id,
            attempt=max(1, request.attempt),
            worker_id=request.worker_id,
            model=request.model,
            status=status,
            error_code=str(code),
            reported_by=REPORTED_BY,
            time_to_first_chunk_ms=None,
            duration_ms=max(0, int((now - request.received_at) * 1000)),
            completion_tokens=0,
            finished_at=_ts(now),
            min_coefficient=(
                request.last_miss.min_coefficient
                if code is ErrorCode.PRICE_CAP and request.last_miss is not None
                else None
            ),
        )

    def _done(self, request: Request, now: float) -> None:
        request.phase = Phase.DONE
        request.done_at = now
        self._unqueue(request)
        self._finished.append((now, request.request_id))
        if request.logged:
            self._changed(request)  # its changelog record is tombstoned
        else:
            self.changes.pop(request.request_id, None)  # never written: nothing to end

    # ---- shards -------------------------------------------------------------------------

    def take_changes(self) -> list[Request]:
        """The requests to write to the changelog (a tombstone for DONE ones), oldest change
        first; each is marked `logged`."""
        changed = list(self.changes.values())
        self.changes.clear()
        for request in changed:
            request.logged = request.phase is not Phase.DONE
        return changed

    def drop_shards(self, shards: set[int], now: float) -> int:
        """Forget the unended requests of `shards` (another instance owns them now): out of the
        queues, their leases out of the pool. Their changelog records stay for the new owner.
        Ended ones are still remembered, so a replay of them is not placed. Returns how many."""
        dropped = [
            r for r in self.requests.values() if r.shard in shards and r.phase is not Phase.DONE
        ]
        for request in dropped:
            self._unqueue(request)
            self.pool.release(request.request_id, now)
            self.changes.pop(request.request_id, None)
            del self.requests[request.request_id]
        return len(dropped)

    def recover(self, owned: Request, lease: Lease | None, now: float) -> list:
        """Take over a request from its changelog record: waiting again, or its lease restored
        with its own grant time and first-chunk deadline (the tick expires it if it passed).
        A request already known here (read twice, or never dropped) is left as it is."""
        if owned.request_id in self.requests:
            return []
        self.requests[owned.request_id] = owned
        owned.logged = True
        if lease is None:
            owned.phase = Phase.PENDING
            self._queues.setdefault(owned.model, {})[owned.request_id] = owned
            return self._try_place(owned, now)
        if not lease.started and self._started_elsewhere.get(owned.request_id) == lease.attempt:
            lease = replace(lease, started=True)
            owned.phase = Phase.STARTED
            self._changed(owned)
        self.pool.restore(lease)
        return []

    def _remember_start(self, request_id: str, attempt: int) -> None:
        self._started_elsewhere[request_id] = attempt
        if len(self._started_elsewhere) > STARTS_REMEMBERED:
            del self._started_elsewhere[next(iter(self._started_elsewhere))]

    def _forget(self, now: float) -> None:
        horizon = now - self.timing.remember_seconds
        while self._finished and self._finished[0][0] < horizon:
            _, rid = self._finished.popleft()
            self.requests.pop(rid, None)

    def count(self, phase: Phase) -> int:
        """Requests in `phase`; without a pass over them, except for DONE (remembered ones)."""
        if phase is Phase.PENDING:
            return sum(len(queue) for queue in self._queues.values())
        # A request is LEASED while its lease waits for a first chunk, STARTED once it has one.
        leased, started = self.pool.lease_counts()
        if phase is Phase.LEASED:
            return leased
        if phase is Phase.STARTED:
            return started
        return sum(1 for r in self.requests.values() if r.phase is phase)
