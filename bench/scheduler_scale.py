"""Cost of one placement decision against pool size, today's scheduler beside the full scan.

    .venv/bin/python bench/scheduler_scale.py [--sizes 100,1000,10000,100000]
        [--decisions 2000] [--budget-s 10] [--impl fullscan,indexed]

Setup (not timed): a `WorkerPool` of N workers for one model, each heartbeating (capacity 8) with
an accepted verdict; about half the slots hold leases, spread at random. "history": every worker
has finished requests (a decayed average duration of its own); "fresh": none has, as after a
scheduler restart, so a worker's expected duration comes from its peers.

Timed: `choose_worker` for one request, as the dispatcher calls it, in CPU time of the calling
thread (`decision_ms` is the mean, `p50_ms` and `max_ms` too; `wall_p50_ms` is wall clock,
which a shared machine inflates). Between decisions (not
timed) the chosen worker is granted the lease and a random earlier lease finishes, so the load
stays where it was and, with history, durations keep being learnt.

`indexed` is the package as it is (`cocoon.scheduler`); `fullscan` is the scheduler before issue
14, loaded from git (bench/scheduler_baseline.py). A case runs until `--decisions` decisions or
`--budget-s` seconds of decisions, whichever comes first (at least one). A case whose single
decision is estimated, from the previous size, to take longer than `--max-decision-s` is not run
and is reported as skipped with that estimate. One JSON line per size, case and implementation.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
import types

import scheduler_baseline

from cocoon.scheduler import placement, pool

MODEL = "m"
CAPACITY = 8
NOW = 1_800_000_000.0


def implementations(names: list[str]) -> dict[str, types.SimpleNamespace]:
    known = {
        "indexed": lambda: types.SimpleNamespace(pool=pool, placement=placement),
        "fullscan": scheduler_baseline.load,
    }
    return {name: known[name]() for name in names}


def build_pool(impl: types.SimpleNamespace, n: int, history: bool, rng: random.Random):
    workers = impl.pool.WorkerPool()
    for i in range(n):
        wid = f"w{i:06d}"
        workers.heartbeat(wid, NOW, models=[MODEL], capacity=CAPACITY, coefficient=1000)
        workers.accept_verdict(wid, f"v{i}", NOW + 3600, [MODEL])
        if history:
            seconds = rng.uniform(0.5, 5.0)
            workers.grant(f"h{i}", wid, MODEL, NOW - 60, lease_seconds=30)
            workers.finish(f"h{i}", NOW - 60 + seconds, success=True)
    leases = []
    for i in range(n * CAPACITY // 2):
        rid = f"l{i}"
        wid = f"w{rng.randrange(n):06d}"
        if len(workers.get(wid).leases) < CAPACITY - 1:
            workers.grant(rid, wid, MODEL, NOW, lease_seconds=30)
            leases.append(rid)
    return workers, leases


def run_case(
    impl: types.SimpleNamespace, n: int, history: bool, args: argparse.Namespace
) -> dict[str, object]:
    rng = random.Random(n)
    workers, leases = build_pool(impl, n, history, rng)
    gc.collect()
    timings: list[float] = []  # CPU seconds of this thread: the machine may be shared
    walls: list[float] = []
    started = time.perf_counter()
    now = NOW
    while len(timings) < args.decisions and (
        not timings or time.perf_counter() - started < args.budget_s
    ):
        now += 0.001
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        choice = impl.placement.choose_worker(workers, MODEL, 4000, now)
        timings.append(time.thread_time() - cpu0)
        walls.append(time.perf_counter() - wall0)
        rid = f"d{len(timings)}"
        workers.grant(rid, choice.worker_id, MODEL, now, lease_seconds=30)
        leases.append(rid)
        done = leases.pop(rng.randrange(len(leases)))
        workers.finish(done, now + rng.uniform(0.5, 5.0) if history else now, success=history)
    return {
        "decision_ms": round(statistics.fmean(timings) * 1000, 4),
        "p50_ms": round(statistics.median(timings) * 1000, 4),
        "max_ms": round(max(timings) * 1000, 4),
        "wall_p50_ms": round(statistics.median(walls) * 1000, 4),
        "decisions": len(timings),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--budget-s", type=float, default=10.0)
    parser.add_argument("--max-decision-s", type=float, default=60.0)
    parser.add_argument("--impl", default="fullscan,indexed")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    impls = implementations(args.impl.split(","))
    for history in (True, False):
        for name, impl in impls.items():
            previous: tuple[int, float] | None = None
            for n in sizes:
                line: dict[str, object] = {
                    "bench": "scheduler_scale",
                    "impl": name,
                    "workers": n,
                    "history": history,
                }
                # Full scans grow linearly with history and quadratically without it.
                growth = 1 if history else 2
                estimate = previous and previous[1] * (n / previous[0]) ** growth / 1000
                if estimate and estimate > args.max_decision_s:
                    line |= {"skipped": True, "estimated_decision_s": round(estimate, 1)}
                else:
                    line |= run_case(impl, n, history, args)
                    previous = (n, line["decision_ms"])
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
