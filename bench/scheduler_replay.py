"""Replay Azure's LLM inference trace through the real scheduler, placement policies side by side.

    .venv/bin/python bench/scheduler_replay.py [--trace conv|code] [--requests 3000]
        [--loads 1x,0.8,0.95] [--policies round_robin,random,least_loaded,cocoon,fullscan,indexed]

The trace (../shared/data/azure-llm-2023, Microsoft Azure Public Dataset, CC-BY-4.0): arrival
times, prompt and completion tokens of production requests. The first `--requests` arrivals are
replayed at the trace's own rate (`1x`) and compressed so the offered work is a given share of
the pool's capacity (`0.8` = 80 % load; the speed-up used is printed).

What runs: the scheduler's real `Dispatcher` and `WorkerPool` (records built from the Avro
models), in simulated time, against 128 simulated workers: 64 standard (4 slots, 40 tok/s), 32
fast (8 slots, 60 tok/s), 24 slow (2 slots, 15 tok/s), 4 stragglers (2 slots, 3 tok/s) and 4
flaky (standard, but half their requests fail 50 ms after starting). A worker runs at most its
slots at once and queues the rest, heartbeats every 2 s with the requests it holds (as
worker-proxy does), and reports the first chunk and the outcome 5 ms after they happen;
an assignment reaches it 20 ms after the decision. Leases are 10 s, as deployed.

Policies: `indexed` is the package as it is; `fullscan` is the scheduler before issue 14 (its
own dispatcher, pool and placement, loaded from git, bench/scheduler_baseline.py);
`indexed@<commit>` is the package as it was at that commit (loaded the same way). The others
are placement functions given to today's dispatcher and pool: `round_robin`, `random`,
`least_loaded` (fewest requests by the last heartbeat, not counting our dispatches since) and
`cocoon` (COCOON's running x average time, 0 for a worker without history). All of them respect
verdicts, exclusions, price caps and, by their own view of load, capacity.

Reported, one JSON line per policy and load: time to first token p50/p99 and completion time
p50/p99 of the requests that succeeded, requests that missed a 10 s TTFT objective (failed ones
included), failed requests (of which failed by a flaky worker; the rest the scheduler ended:
lease expired three times, or no slot within the request's 120 s), Jain's fairness index of
requests served among the 64 standard workers (1 = perfectly even), and the scheduler's CPU
time per placed request (thread CPU spent inside the dispatcher's handlers and ticks, over the
assignments it made).
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import scheduler_baseline

from cocoon.core.codec import models
from cocoon.scheduler import dispatcher, placement
from cocoon.scheduler.placement import NoPlacement, NoPlacementReason, Placement
from cocoon.scheduler.pool import WorkerPool, WorkerState

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "azure-llm-2023"
MODEL = "m"
T0 = 1_800_000_000.0
HEARTBEAT_EVERY = 2.0
TICK_EVERY = 0.1
DISPATCH_DELAY = 0.020  # decision -> the worker has the sealed work item
REPORT_DELAY = 0.005  # worker -> the scheduler reads its chunk or outcome
FAIL_AFTER = 0.050
TTFT_OBJECTIVE = 10.0
SLO_WINDOW = 120.0  # requests may wait this long in all (their deadline)


@dataclass(frozen=True)
class Kind:
    name: str
    count: int
    slots: int
    decode_tps: float
    prefill_tps: float
    fail_share: float = 0.0


KINDS = (
    Kind("standard", 64, 4, 40.0, 4000.0),
    Kind("fast", 32, 8, 60.0, 8000.0),
    Kind("slow", 24, 2, 15.0, 1500.0),
    Kind("straggler", 4, 2, 3.0, 300.0),
    Kind("flaky", 4, 4, 40.0, 4000.0, fail_share=0.5),
)


@dataclass
class Job:
    request_id: str
    attempt: int
    prompt: int
    output: int


@dataclass
class SimWorker:
    worker_id: str
    kind: Kind
    running: int = 0
    waiting: deque[Job] = field(default_factory=deque)
    seq: int = 0
    served: int = 0

    def holds(self) -> int:
        return self.running + len(self.waiting)


@dataclass
class Trip:
    arrival: float
    prompt: int
    output: int
    attempt: int = 0
    first_token: float | None = None
    done: float | None = None
    failed: bool = False


def read_trace(name: str, limit: int) -> list[tuple[float, int, int]]:
    rows = []
    with (DATA / f"AzureLLMInferenceTrace_{name}.csv").open() as f:
        for row in csv.DictReader(f):
            stamp = datetime.fromisoformat(row["TIMESTAMP"][:26])
            rows.append((stamp.timestamp(), int(row["ContextTokens"]), int(row["GeneratedTokens"])))
            if len(rows) == limit:
                break
    start = rows[0][0]
    return [(t - start, p, g) for t, p, g in rows]


def service_seconds(kind: Kind, prompt: int, output: int) -> tuple[float, float]:
    """(prefill, decode) seconds of one request on one slot of this kind of worker."""
    return prompt / kind.prefill_tps, max(1, output) / kind.decode_tps


def capacity_rps(trace: list[tuple[float, int, int]]) -> float:
    """Requests per second the pool completes when every slot is always busy."""
    total = 0.0
    for kind in KINDS:
        mean = statistics.fmean(sum(service_seconds(kind, p, g)) for _, p, g in trace)
        total += kind.count * kind.slots / mean
    return total


# ---- baseline placement policies (choose_worker's signature) -----------------------------


def _filtered(
    pool: WorkerPool,
    model: str,
    max_coefficient: int,
    now: float,
    exclude: Collection[str],
    load: Callable[[WorkerState], int],
) -> list[WorkerState] | NoPlacement:
    workers = pool.workers(model)
    if not workers:
        return NoPlacement(NoPlacementReason.UNKNOWN_MODEL, model)
    ready = [w for w in workers if w.worker_id not in exclude and pool.placeable(w, model, now)]
    if not ready:
        return NoPlacement(NoPlacementReason.NO_ATTESTED_WORKER, model)
    free = [w for w in ready if load(w) < w.capacity and w.coefficient <= max_coefficient]
    return free or NoPlacement(NoPlacementReason.ALL_BUSY, model)


def _placement(w: WorkerState) -> Placement:
    assert w.verdict_id is not None
    return Placement(w.worker_id, w.verdict_id, w.work_topic, w.coefficient, 0.0, 0.0)


def round_robin() -> placement.ChooseWorker:
    turn = [0]

    def choose(pool, model, max_coefficient, now, exclude=frozenset()):
        free = _filtered(pool, model, max_coefficient, now, exclude, lambda w: w.running)
        if isinstance(free, NoPlacement):
            return free
        turn[0] += 1
        return _placement(free[turn[0] % len(free)])

    return choose


def uniform_random() -> placement.ChooseWorker:
    rng = random.Random(1)

    def choose(pool, model, max_coefficient, now, exclude=frozenset()):
        free = _filtered(pool, model, max_coefficient, now, exclude, lambda w: w.running)
        return free if isinstance(free, NoPlacement) else _placement(rng.choice(free))

    return choose


def least_loaded() -> placement.ChooseWorker:
    def choose(pool, model, max_coefficient, now, exclude=frozenset()):
        # The worker's own count from its last heartbeat: our dispatches since are invisible.
        heard = lambda w: w.reported_running  # noqa: E731
        free = _filtered(pool, model, max_coefficient, now, exclude, heard)
        if isinstance(free, NoPlacement):
            return free
        return _placement(min(free, key=lambda w: (heard(w) / w.capacity, w.worker_id)))

    return choose


def cocoon() -> placement.ChooseWorker:
    def choose(pool, model, max_coefficient, now, exclude=frozenset()):
        free = _filtered(pool, model, max_coefficient, now, exclude, lambda w: w.running)
        if isinstance(free, NoPlacement):
            return free
        return _placement(
            min(free, key=lambda w: (w.running * (w.duration.value() or 0.0), w.worker_id))
        )

    return choose


POLICIES: dict[str, Callable[[], Any]] = {
    "round_robin": round_robin,
    "random": uniform_random,
    "least_loaded": least_loaded,
    "cocoon": cocoon,
}


def build_dispatcher(policy: str) -> Any:
    timing = dispatcher.Timing(busy_wait_seconds=SLO_WINDOW)
    if policy == "fullscan":
        old = scheduler_baseline.load()
        return old.dispatcher.Dispatcher(old.pool.WorkerPool(), timing)
    if policy.startswith("indexed@"):  # the package as it was at a commit, e.g. before a change
        old = scheduler_baseline.load(policy.removeprefix("indexed@"))
        return old.dispatcher.Dispatcher(old.pool.WorkerPool(seed=1), timing)
    pool = WorkerPool(seed=1)
    if policy == "indexed":
        return dispatcher.Dispatcher(pool, timing)
    return dispatcher.Dispatcher(pool, timing, choose=POLICIES[policy]())


# ---- the simulation ------------------------------------------------------------------------


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class Replay:
    def __init__(self, policy: str, trace: list[tuple[float, int, int]], speedup: float) -> None:
        self.d = build_dispatcher(policy)
        self.rng = random.Random(7)
        self.events: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.cpu = 0.0
        self.assignments = 0
        self.worker_failures = 0  # requests a flaky worker failed (the rest the scheduler ended)
        self.trips: dict[str, Trip] = {}
        self.workers: dict[str, SimWorker] = {}
        self.remaining = len(trace)
        for i, (t, prompt, output) in enumerate(trace):
            self.push(T0 + t / speedup, "arrive", (f"r{i}", prompt, output))
        # Ids in random order across kinds, so no policy's tie-break favours one kind.
        ids = random.Random(3).sample(range(1000), sum(kind.count for kind in KINDS))
        n = 0
        for kind in KINDS:
            for _ in range(kind.count):
                worker = SimWorker(f"w{ids[n]:03d}", kind)
                self.workers[worker.worker_id] = worker
                verdict = models.Verdict(
                    verdict_id=f"v{n}",
                    worker_id=worker.worker_id,
                    status="TRUSTED",
                    models=[MODEL],
                    registry_version=1,
                    issued_at=_at(T0 - 60),
                    expires_at=_at(T0 + 86400),
                    attestor_key_id="att",
                    signature=b"\0" * 64,
                    signing_key=b"\1" * 32,  # a verdict without the worker's key admits nothing
                )
                self.d.on_verdict(worker.worker_id, verdict, accepted=True)
                # Heartbeats spread over the period, as independent workers' are.
                self.push(T0 - HEARTBEAT_EVERY * self.rng.random(), "heartbeat", worker)
                n += 1
        self.push(T0, "tick", None)

    def push(self, at: float, kind: str, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, payload))

    def scheduler(self, call: Callable[..., list], *args: Any) -> None:
        """Run one dispatcher handler, on the clock, and deliver what it emits."""
        started = time.thread_time()
        emitted = call(*args)
        self.cpu += time.thread_time() - started
        now = args[-1]
        for record in emitted:
            if isinstance(record, models.Assignment):
                self.assignments += 1
                trip = self.trips[record.request_id]
                trip.attempt = record.attempt
                job = Job(record.request_id, record.attempt, trip.prompt, trip.output)
                self.push(now + DISPATCH_DELAY, "deliver", (record.worker_id, job))
            elif record.request_id in self.trips:  # the scheduler ended it (no worker, ...)
                self.finish_trip(record.request_id, now, failed=True)

    def finish_trip(self, request_id: str, now: float, *, failed: bool) -> None:
        trip = self.trips[request_id]
        if trip.done is None:
            trip.done, trip.failed = now, failed
            self.remaining -= 1

    def run(self) -> dict[str, Trip]:
        while self.events and self.remaining:
            now, _, kind, payload = heapq.heappop(self.events)
            getattr(self, f"on_{kind}")(now, payload)
        return self.trips

    # events

    def on_arrive(self, now: float, payload: tuple[str, int, int]) -> None:
        request_id, prompt, output = payload
        self.trips[request_id] = Trip(now, prompt, output)
        reservation = models.Reservation(
            reservation_id=f"res-{request_id}",
            request_id=request_id,
            account_id="a",
            model=MODEL,
            status="HELD",
            amount_nanoton=1,
            max_tokens=max(1, output),
            max_coefficient=4000,
            gateway_id="gw",
            deadline_at=_at(now + SLO_WINDOW),
            decided_at=_at(now),
        )
        self.scheduler(self.d.on_reservation, reservation, now)

    def on_tick(self, now: float, _: None) -> None:
        self.scheduler(self.d.tick, now)
        self.push(now + TICK_EVERY, "tick", None)

    def on_heartbeat(self, now: float, worker: SimWorker) -> None:
        worker.seq += 1
        beat = models.Heartbeat(
            worker_id=worker.worker_id,
            models=[MODEL],
            state="READY",
            max_active_requests=worker.kind.slots,
            active_requests=worker.holds(),
            coefficient=1000,
            work_topic=f"work.{worker.worker_id}",
            seq=worker.seq,
            sent_at=_at(now),
        )
        self.scheduler(self.d.on_heartbeat, beat, max(now, T0))
        self.push(now + HEARTBEAT_EVERY, "heartbeat", worker)

    def on_deliver(self, now: float, payload: tuple[str, Job]) -> None:
        worker_id, job = payload
        worker = self.workers[worker_id]
        worker.waiting.append(job)
        self.start_next(worker, now)

    def start_next(self, worker: SimWorker, now: float) -> None:
        while worker.running < worker.kind.slots and worker.waiting:
            job = worker.waiting.popleft()
            if self.trips[job.request_id].attempt != job.attempt or self.trips[job.request_id].done:
                continue  # superseded while it waited: the gateway cancelled it
            worker.running += 1
            if self.rng.random() < worker.kind.fail_share:
                self.push(now + FAIL_AFTER, "end", (worker, job, False))
                continue
            prefill, decode = service_seconds(worker.kind, job.prompt, job.output)
            self.push(now + prefill, "first_token", (worker, job))
            self.push(now + prefill + decode, "end", (worker, job, True))

    def on_first_token(self, now: float, payload: tuple[SimWorker, Job]) -> None:
        _, job = payload
        trip = self.trips[job.request_id]
        if trip.attempt == job.attempt and trip.first_token is None:
            trip.first_token = now + REPORT_DELAY
        started = time.thread_time()
        self.d.on_first_chunk(job.request_id, job.attempt, 0)
        self.cpu += time.thread_time() - started

    def on_end(self, now: float, payload: tuple[SimWorker, Job, bool]) -> None:
        worker, job, ok = payload
        worker.running -= 1
        worker.served += ok
        self.worker_failures += not ok
        outcome = models.Outcome(
            request_id=job.request_id,
            attempt=job.attempt,
            worker_id=worker.worker_id,
            model=MODEL,
            status="SUCCEEDED" if ok else "FAILED",
            reported_by="worker-proxy",
            duration_ms=1,
            completion_tokens=job.output,
            finished_at=_at(now),
        )
        if self.trips[job.request_id].attempt == job.attempt:
            self.finish_trip(job.request_id, now + REPORT_DELAY, failed=not ok)
        self.scheduler(self.d.on_outcome, outcome, now + REPORT_DELAY)
        self.start_next(worker, now)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def jain(values: list[int]) -> float:
    total = sum(values)
    return total * total / (len(values) * sum(v * v for v in values)) if total else 1.0


def report(replay: Replay, policy: str, load: str, speedup: float) -> dict[str, object]:
    trips = replay.trips.values()
    ok = [t for t in trips if t.done is not None and not t.failed and t.first_token is not None]
    ttft = [t.first_token - t.arrival for t in ok]
    completion = [t.done - t.arrival for t in ok]
    missed = sum(1 for t in trips if t.failed or t.first_token is None) + sum(
        1 for x in ttft if x > TTFT_OBJECTIVE
    )
    standard = [w.served for w in replay.workers.values() if w.kind.name == "standard"]

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {
        "bench": "scheduler_replay",
        "policy": policy,
        "load": load,
        "speedup": round(speedup, 2),
        "requests": len(replay.trips),
        "ttft_p50_ms": ms(percentile(ttft, 0.5)),
        "ttft_p99_ms": ms(percentile(ttft, 0.99)),
        "completion_p50_ms": ms(percentile(completion, 0.5)),
        "completion_p99_ms": ms(percentile(completion, 0.99)),
        "missed_ttft_10s": missed,
        "failed": sum(1 for t in trips if t.failed),
        "failed_by_worker": replay.worker_failures,
        "fairness_standard": round(jain(standard), 4),
        "cpu_us_per_placement": round(replay.cpu / max(1, replay.assignments) * 1e6, 1),
        "assignments": replay.assignments,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", choices=("conv", "code"), default="conv")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--loads", default="1x,0.8,0.95")
    parser.add_argument(
        "--policies", default="round_robin,random,least_loaded,cocoon,fullscan,indexed"
    )
    args = parser.parse_args()
    trace = read_trace(args.trace, args.requests)
    trace_rps = len(trace) / max(1e-9, trace[-1][0])
    for load in args.loads.split(","):
        speedup = 1.0 if load == "1x" else float(load) * capacity_rps(trace) / trace_rps
        for policy in args.policies.split(","):
            replay = Replay(policy, trace, speedup)
            replay.run()
            print(json.dumps(report(replay, policy, load, speedup)), flush=True)


if __name__ == "__main__":
    main()
