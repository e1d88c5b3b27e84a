"""choose_worker: filters, reasons, expected-completion choice, reputation, properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.scheduler.placement import (
    NoPlacement,
    NoPlacementReason,
    Placement,
    choose_worker,
    score,
)
from cocoon.scheduler.pool import WorkerPool

NOW = 1000.0


def _add(
    pool: WorkerPool,
    worker_id: str,
    *,
    model: str = "m",
    capacity: int = 4,
    coefficient: int = 1000,
    verdict_ttl: float | None = 3600.0,
    heartbeat_age: float = 0.0,
    draining: bool = False,
) -> None:
    pool.heartbeat(
        worker_id,
        NOW - heartbeat_age,
        models=[model],
        capacity=capacity,
        coefficient=coefficient,
        work_topic=f"work.{worker_id}",
        draining=draining,
    )
    if verdict_ttl is not None:
        pool.accept_verdict(worker_id, f"v-{worker_id}", NOW + verdict_ttl, [model])


def _busy(pool: WorkerPool, worker_id: str, n: int) -> None:
    for i in range(n):
        pool.grant(f"{worker_id}-busy-{i}", worker_id, "m", now=NOW, lease_seconds=30.0)


def _train(pool: WorkerPool, worker_id: str, seconds: float, n: int = 3) -> None:
    for i in range(n):
        rid = f"{worker_id}-train-{i}"
        pool.grant(rid, worker_id, "m", now=NOW - 100, lease_seconds=30.0)
        pool.finish(rid, NOW - 100 + seconds, success=True)


def test_unknown_model():
    pool = WorkerPool()
    _add(pool, "a")
    result = choose_worker(pool, "nope", 4000, NOW)
    assert result == NoPlacement(NoPlacementReason.UNKNOWN_MODEL, "nope")
    assert "unknown model" in result.message()


def test_no_verdict_no_work():
    pool = WorkerPool()
    _add(pool, "a", verdict_ttl=None)
    _add(pool, "b", verdict_ttl=-1.0)  # expired a second ago
    result = choose_worker(pool, "m", 4000, NOW)
    assert isinstance(result, NoPlacement)
    assert result.reason is NoPlacementReason.NO_ATTESTED_WORKER


def test_stale_heartbeat_draining_and_excluded_are_not_ready():
    pool = WorkerPool()
    _add(pool, "stale", heartbeat_age=pool.heartbeat_ttl + 1)
    _add(pool, "draining", draining=True)
    _add(pool, "tried")
    result = choose_worker(pool, "m", 4000, NOW, exclude={"tried"})
    assert result.reason is NoPlacementReason.NO_ATTESTED_WORKER
    assert choose_worker(pool, "m", 4000, NOW).worker_id == "tried"


def test_a_client_sealed_request_goes_only_to_its_candidates():
    pool = WorkerPool()
    _add(pool, "fast")
    _add(pool, "slow")
    _train(pool, "fast", 1.0)
    _train(pool, "slow", 4.0)
    assert choose_worker(pool, "m", 4000, NOW).worker_id == "fast"
    assert choose_worker(pool, "m", 4000, NOW, only={"slow"}).worker_id == "slow"
    result = choose_worker(pool, "m", 4000, NOW, exclude={"slow"}, only={"slow"})
    assert result.reason is NoPlacementReason.NO_ATTESTED_WORKER


def test_all_busy():
    pool = WorkerPool()
    _add(pool, "a", capacity=1)
    _busy(pool, "a", 1)
    assert choose_worker(pool, "m", 4000, NOW).reason is NoPlacementReason.ALL_BUSY


def test_price_cap_too_low_reports_minimum_coefficient():
    pool = WorkerPool()
    _add(pool, "a", coefficient=2500)
    _add(pool, "b", coefficient=1800)
    _add(pool, "c", coefficient=1200, capacity=1)
    _busy(pool, "c", 1)  # busy workers do not count towards the minimum
    result = choose_worker(pool, "m", 1000, NOW)
    assert result == NoPlacement(NoPlacementReason.PRICE_CAP_TOO_LOW, "m", min_coefficient=1800)
    assert "1800" in result.message()
    assert choose_worker(pool, "m", 1800, NOW).worker_id == "b"


def test_idle_fast_worker_beats_idle_slow_worker():
    pool = WorkerPool()
    _add(pool, "fast")
    _add(pool, "slow")
    _train(pool, "fast", 1.0)
    _train(pool, "slow", 4.0)
    chosen = choose_worker(pool, "m", 4000, NOW)
    assert isinstance(chosen, Placement)
    assert chosen.worker_id == "fast"
    assert chosen.verdict_id == "v-fast" and chosen.work_topic == "work.fast"


def test_load_shifts_work_to_the_slower_worker():
    pool = WorkerPool()
    _add(pool, "fast")
    _add(pool, "slow")
    _train(pool, "fast", 1.0)
    _train(pool, "slow", 2.0)
    _busy(pool, "fast", 2)  # (2+1) x 1 = 3 s > (0+1) x 2 = 2 s
    chosen = choose_worker(pool, "m", 4000, NOW)
    assert chosen.worker_id == "slow"
    assert chosen.expected_seconds == pytest.approx(2.0)


def test_new_worker_uses_peer_average_not_zero():
    # COCOON weighs a worker without history as 0, so it takes everything; we use peers' mean.
    pool = WorkerPool()
    _add(pool, "known")
    _add(pool, "new")
    _train(pool, "known", 1.0)
    _busy(pool, "new", 1)
    assert choose_worker(pool, "m", 4000, NOW).worker_id == "known"


def test_reputation_lowers_a_workers_chance():
    pool = WorkerPool()
    _add(pool, "a")
    _add(pool, "b")
    assert choose_worker(pool, "m", 4000, NOW).worker_id == "a"  # tie -> lower id
    pool.receipt_rejected("a", NOW)
    assert choose_worker(pool, "m", 4000, NOW).worker_id == "b"


def test_tie_breaks_on_coefficient_then_id():
    pool = WorkerPool()
    _add(pool, "a", coefficient=1500)
    _add(pool, "b", coefficient=1000)
    _add(pool, "c", coefficient=1000)
    assert choose_worker(pool, "m", 4000, NOW).worker_id == "b"


def test_choose_is_pure():
    pool = WorkerPool()
    _add(pool, "a")
    choose_worker(pool, "m", 4000, NOW)
    assert pool.get("a").running == 0


# ---- properties -------------------------------------------------------------------------

# Biased towards eligible workers so each filter is exercised by the one it would let through.
_mostly_false = st.sampled_from([False, False, False, True])
_worker = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["m", "m", "other"]),
        "capacity": st.integers(0, 4),
        "running": st.integers(0, 2),
        "coefficient": st.integers(500, 5000),
        "verdict_ttl": st.one_of(st.none(), st.floats(-100, 100)),
        "verdict_models": st.sampled_from([["m"], ["other"], ["m", "other"]]),
        "heartbeat_age": st.floats(0, 20),
        "draining": _mostly_false,
        "enabled": _mostly_false.map(lambda b: not b),
        "failures": st.integers(0, 5),
        "duration": st.one_of(st.none(), st.floats(0.01, 20)),
    }
)


def _build(workers: list[dict]) -> WorkerPool:
    pool = WorkerPool()
    for i, w in enumerate(workers):
        wid = f"w{i}"
        pool.heartbeat(
            wid,
            NOW - w["heartbeat_age"],
            models=[w["model"]],
            capacity=w["capacity"],
            coefficient=w["coefficient"],
            draining=w["draining"],
            enabled=w["enabled"],
            running=w["running"],
        )
        if w["verdict_ttl"] is not None:
            pool.accept_verdict(wid, f"v{i}", NOW + w["verdict_ttl"], w["verdict_models"])
        for j in range(w["failures"]):
            pool.grant(f"{wid}-f{j}", wid, w["model"], now=NOW - 50, lease_seconds=1.0)
            pool.reclaim(f"{wid}-f{j}", NOW - 40)
        if w["duration"] is not None:
            pool.grant(f"{wid}-d", wid, w["model"], now=NOW - 50, lease_seconds=1.0)
            pool.finish(f"{wid}-d", NOW - 50 + w["duration"], success=True)
    return pool


@settings(max_examples=500, deadline=None)
@given(
    workers=st.lists(_worker, max_size=6),
    cap=st.integers(400, 6000),
    exclude=st.sets(st.sampled_from([f"w{i}" for i in range(6)]), max_size=3),
)
def test_chosen_worker_satisfies_every_filter(workers, cap, exclude):
    pool = _build(workers)
    result = choose_worker(pool, "m", cap, NOW, exclude=exclude)
    eligible = [
        w
        for w in pool.workers("m")
        if w.worker_id not in exclude
        and w.verdict_expires_at is not None
        and w.verdict_expires_at > NOW
        and "m" in w.verdict_models
        and w.enabled
        and not w.draining
        and NOW - w.last_heartbeat <= pool.heartbeat_ttl
        and w.running < w.capacity
        and w.coefficient <= cap
    ]
    if not eligible:
        assert isinstance(result, NoPlacement)
        if result.reason is NoPlacementReason.PRICE_CAP_TOO_LOW:
            assert result.min_coefficient is not None and result.min_coefficient > cap
        return
    assert isinstance(result, Placement)
    assert result.worker_id in {w.worker_id for w in eligible}
    # Nothing eligible has a strictly better score.
    assert all(result.score <= score(pool, w, "m", NOW)[1] for w in eligible)


def _reason(pool: WorkerPool, cap: int, exclude: set[str]) -> NoPlacement | None:
    """What the filters say, straight from their definitions (None: someone is eligible)."""
    if not pool.workers("m"):
        return NoPlacement(NoPlacementReason.UNKNOWN_MODEL, "m")
    ready = [
        w for w in pool.workers("m") if w.worker_id not in exclude and pool.placeable(w, "m", NOW)
    ]
    if not ready:
        return NoPlacement(NoPlacementReason.NO_ATTESTED_WORKER, "m")
    free = [w for w in ready if w.running < w.capacity]
    if not free:
        return NoPlacement(NoPlacementReason.ALL_BUSY, "m")
    if not any(w.coefficient <= cap for w in free):
        if any(w.coefficient <= cap for w in ready):
            # Within the cap but busy: the request waits for it (docs/api.md, max_coefficient).
            return NoPlacement(NoPlacementReason.ALL_BUSY, "m")
        cheapest = min(w.coefficient for w in free)
        return NoPlacement(NoPlacementReason.PRICE_CAP_TOO_LOW, "m", min_coefficient=cheapest)
    return None


@settings(max_examples=300, deadline=None)
@given(
    workers=st.lists(_worker, max_size=40),
    cap=st.integers(400, 6000),
    exclude=st.sets(st.sampled_from([f"w{i}" for i in range(40)]), max_size=3),
)
def test_sampled_placement_keeps_every_filter_and_every_reason(workers, cap, exclude):
    # Pools larger than EXACT_MAX take the sampled path; the answer must still satisfy every
    # filter, and "no placement" must name the same reason the definitions give.
    pool = _build(workers)
    expected = _reason(pool, cap, exclude)
    result = choose_worker(pool, "m", cap, NOW, exclude=exclude)
    if expected is not None:
        assert result == expected
        return
    assert isinstance(result, Placement)
    chosen = pool.get(result.worker_id)
    assert result.worker_id not in exclude and pool.placeable(chosen, "m", NOW)
    assert chosen.running < chosen.capacity and chosen.coefficient <= cap


def test_the_one_affordable_worker_among_many_is_found():
    pool = WorkerPool(seed=1)
    for i in range(500):
        _add(pool, f"w{i:03d}", coefficient=3000)
    _add(pool, "cheap", coefficient=900)
    assert choose_worker(pool, "m", 1000, NOW).worker_id == "cheap"
    _busy(pool, "cheap", 4)
    # Busy, but within the cap: the request waits for it rather than failing on price.
    result = choose_worker(pool, "m", 1000, NOW)
    assert result == NoPlacement(NoPlacementReason.ALL_BUSY, "m")
    result = choose_worker(pool, "m", 800, NOW)
    assert result == NoPlacement(NoPlacementReason.PRICE_CAP_TOO_LOW, "m", min_coefficient=3000)


def test_workers_already_tried_are_never_drawn():
    pool = WorkerPool(seed=3)
    for i in range(20):
        _add(pool, f"w{i:02d}")
    tried = {f"w{i:02d}" for i in range(19)}
    for _ in range(50):
        assert choose_worker(pool, "m", 4000, NOW, exclude=tried).worker_id == "w19"
    tried.add("w19")
    result = choose_worker(pool, "m", 4000, NOW, exclude=tried)
    assert result.reason is NoPlacementReason.NO_ATTESTED_WORKER


def test_lapsed_workers_are_skipped_and_set_aside_until_they_heartbeat():
    pool = WorkerPool(seed=1)
    for i in range(100):
        _add(pool, f"old{i:03d}", heartbeat_age=pool.heartbeat_ttl + 1)
    _add(pool, "alive")
    assert choose_worker(pool, "m", 4000, NOW).worker_id == "alive"
    assert len(pool.index("m").members) == 1  # the silent ones are out of the index
    _add(pool, "old000")  # it heartbeats again
    assert len(pool.index("m").members) == 2


def test_sampling_keeps_equal_workers_evenly_loaded():
    pool = WorkerPool(seed=7)
    for i in range(50):
        _add(pool, f"w{i:02d}", capacity=100)
    for n in range(1000):
        choice = choose_worker(pool, "m", 4000, NOW)
        pool.grant(f"r{n}", choice.worker_id, "m", now=NOW, lease_seconds=30.0)
    loads = [w.running for w in pool.workers("m")]
    assert max(loads) - min(loads) <= 3  # 20 each on average; random choice spreads ~ +-9


@settings(max_examples=200, deadline=None)
@given(workers=st.lists(_worker, min_size=1, max_size=6), ttl=st.floats(-1e6, 0))
def test_never_chosen_with_expired_verdict(workers, ttl):
    pool = _build(workers)
    for w in pool.workers():
        pool.accept_verdict(w.worker_id, "old", NOW + ttl, ["m", "other"])
    result = choose_worker(pool, "m", 10_000, NOW)
    assert isinstance(result, NoPlacement)
    assert result.reason in {NoPlacementReason.UNKNOWN_MODEL, NoPlacementReason.NO_ATTESTED_WORKER}


@settings(max_examples=100, deadline=None)
@given(workers=st.lists(_worker, max_size=6), cap=st.integers(0, 6000))
def test_choice_is_deterministic(workers, cap):
    assert choose_worker(_build(workers), "m", cap, NOW) == choose_worker(
        _build(workers), "m", cap, NOW
    )


def test_a_worker_whose_requests_fail_fast_stops_looking_attractive_until_it_cools_down():
    pool = WorkerPool()
    _add(pool, "a")
    _add(pool, "b")
    _train(pool, "a", 1.0)
    _train(pool, "b", 1.0)
    _busy(pool, "b", 1)
    assert choose_worker(pool, "m", 4000, NOW).worker_id == "a"  # idle beats busy
    pool.grant("fails", "a", "m", now=NOW, lease_seconds=30.0)
    pool.finish("fails", NOW + 0.01, success=False)  # a failure, fast: "a" is idle again
    assert choose_worker(pool, "m", 4000, NOW + 0.02).worker_id == "b"
    later = NOW + 120
    for w in ("a", "b"):
        pool.heartbeat(w, later, models=["m"], capacity=4, coefficient=1000)
    assert choose_worker(pool, "m", 4000, later).worker_id == "a"  # cooled down
