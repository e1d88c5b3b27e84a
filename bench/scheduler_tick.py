"""Cost of the scheduler's periodic work against pool size: the tick and the metrics refresh.

    .venv/bin/python bench/scheduler_tick.py [--sizes 100,1000,10000,100000]
        [--ticks 200] [--budget-s 15] [--impl indexed@13fe11d,indexed]

`choose_worker` is measured by bench/scheduler_scale.py; this bench measures what the scheduler
does besides deciding, on the same single event loop: `Dispatcher.tick` (every 100 ms: expire
leases, find workers that went silent, look again at waiting requests) and the metrics refresh
(once a second: placeable workers per model, requests by phase).

Setup (not timed): N workers of one model heartbeating (capacity 8, accepted verdicts), about
half of the slots leased by answers under way (bench/scheduler_scale.py's pool, first chunks
seen), and 1,000 requests waiting because every worker within their price cap is busy (they
ask for a price no free worker has). Between ticks (not timed) the clock moves 100 ms and the
workers heartbeat as they would every 2 s (one twentieth of them per tick), so nobody goes
silent and no lease expires: the steady state, where a tick finds nothing to do. The timed ticks
start 1 s before the setup's heartbeats would go stale, so they include the tick where every
worker's liveness is checked at once.

Timed, in CPU time of the calling thread: one `tick` (`tick_ms`: mean; `tick_p50_ms`,
`tick_max_ms`: every tenth tick is also a waiting request's once-a-second look), one metrics
refresh (`observe_ms`: `pool.models(now)` and `dispatcher.count(phase)` for the three phases, as
metrics.observe does) and the pool's share of one heartbeat (`heartbeat_us`:
`WorkerPool.heartbeat`; the signature check before it is bench/worker_records.py's), with the
garbage collector off as timeit has it (a full collection of a 100,000-worker pool takes longer
than any tick). `indexed` is the package as it is; `indexed@<commit>` the package at that
commit, loaded from git (bench/scheduler_baseline.py). One JSON line per size and
implementation.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
import types
from datetime import UTC, datetime

import scheduler_baseline
from scheduler_scale import CAPACITY, MODEL, NOW, build_pool

from cocoon.core.codec import models
from cocoon.scheduler import dispatcher, placement, pool

WAITING = 1000
TICK_S = 0.1
HEARTBEAT_EVERY_S = 2.0


def implementation(name: str) -> types.SimpleNamespace:
    if name == "indexed":
        return types.SimpleNamespace(pool=pool, placement=placement, dispatcher=dispatcher)
    return scheduler_baseline.load(name.removeprefix("indexed@"))


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def waiting_request(i: int) -> models.Reservation:
    return models.Reservation(
        reservation_id=f"res-q{i}",
        request_id=f"q{i}",
        account_id="a",
        model=MODEL,
        status="HELD",
        amount_nanoton=1,
        max_tokens=8,
        # Free workers all cost 1000 here (see run_case), so this waits as "all busy".
        max_coefficient=1000,
        gateway_id="gw",
        deadline_at=_at(NOW + 3600),
        decided_at=_at(NOW),
    )


def run_case(impl: types.SimpleNamespace, n: int, args: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(n)
    workers, leases = build_pool(impl, n, history=True, rng=rng)
    for request_id in leases:  # streams under way: no first-chunk deadline runs out meanwhile
        workers.first_chunk(request_id)
    timing = dispatcher.Timing(lease_seconds=3600, busy_wait_seconds=3600)
    d = impl.dispatcher.Dispatcher(workers, timing)
    d.known_models.add(MODEL)  # as the verdicts' handler would have
    # One cheap worker, full: the waiting requests may only go to it, so they wait "all busy".
    workers.heartbeat("cheap", NOW, models=[MODEL], capacity=1, coefficient=500)
    workers.accept_verdict("cheap", "v-cheap", NOW + 3600, [MODEL])
    workers.grant("cheap-lease", "cheap", MODEL, NOW, lease_seconds=3600)
    for i in range(n):  # every other worker costs more than the waiting requests accept
        workers.set_coefficient(f"w{i:06d}", 2000)
    for i in range(WAITING):
        assert d.on_reservation(waiting_request(i), NOW) == []
    ids = [f"w{i:06d}" for i in range(n)]
    per_tick = max(1, round(n * TICK_S / HEARTBEAT_EVERY_S))
    turn = 0
    beats: list[float] = []  # CPU seconds per pool.heartbeat, over the timed ticks' heartbeats

    def heartbeats(now: float, timed: bool = False) -> None:
        """This tick's share of the heartbeats: each worker every 2 s, spread over them."""
        nonlocal turn
        cpu = time.thread_time()
        for _ in range(per_tick):
            wid = ids[turn % n]
            turn += 1
            running = len(workers.get(wid).leases)
            workers.heartbeat(
                wid, now, models=[MODEL], capacity=CAPACITY, coefficient=2000, running=running
            )
        if timed:
            beats.append((time.thread_time() - cpu) / per_tick)
        workers.heartbeat("cheap", now, models=[MODEL], capacity=1, coefficient=500, running=1)

    # Not timed: 2 s of heartbeats, so every worker has heartbeated since the setup and the
    # timed ticks cross the moment the setup's heartbeats would have gone stale (NOW + 15 s),
    # when every worker's liveness deadline comes due at once and is re-armed.
    now = NOW + workers.heartbeat_ttl - 1 - HEARTBEAT_EVERY_S
    d.tick(now)  # also clears what the setup left due (the history's finished leases)
    for _ in range(round(HEARTBEAT_EVERY_S / TICK_S)):
        now += TICK_S
        heartbeats(now)
    gc.collect()
    gc.disable()  # as timeit does: a full collection of the large pool is not the tick's cost
    ticks: list[float] = []
    observes: list[float] = []
    started = time.perf_counter()
    while len(ticks) < args.ticks and (not ticks or time.perf_counter() - started < args.budget_s):
        now += TICK_S
        heartbeats(now, timed=True)
        cpu = time.thread_time()
        out = d.tick(now)
        ticks.append(time.thread_time() - cpu)
        assert out == [], "the steady state places and ends nothing"
        if len(ticks) % 10 == 0:  # metrics are refreshed once a second, every 10th tick
            cpu = time.thread_time()
            workers.models(now)
            for phase in (impl.dispatcher.Phase.PENDING, impl.dispatcher.Phase.LEASED):
                d.count(phase)
            d.count(impl.dispatcher.Phase.STARTED)
            observes.append(time.thread_time() - cpu)
    gc.enable()
    return {
        "tick_ms": round(statistics.fmean(ticks) * 1000, 4),
        "tick_p50_ms": round(statistics.median(ticks) * 1000, 4),
        "tick_max_ms": round(max(ticks) * 1000, 4),
        "observe_ms": round(statistics.fmean(observes) * 1000, 4) if observes else None,
        "heartbeat_us": round(statistics.fmean(beats) * 1e6, 2),
        "ticks": len(ticks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--budget-s", type=float, default=15.0)
    parser.add_argument("--impl", default="indexed@13fe11d,indexed")
    args = parser.parse_args()
    for name in args.impl.split(","):
        impl = implementation(name)
        for n in [int(s) for s in args.sizes.split(",")]:
            line = {"bench": "scheduler_tick", "impl": name, "workers": n, "waiting": WAITING}
            print(json.dumps(line | run_case(impl, n, args)), flush=True)


if __name__ == "__main__":
    main()
