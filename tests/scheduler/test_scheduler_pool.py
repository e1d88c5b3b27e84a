"""WorkerPool: verdicts, heartbeats, leases, decayed durations and reputation."""

from __future__ import annotations

import pytest

from cocoon.scheduler.pool import (
    DURATION_HALF_LIFE_S,
    PRIOR_DURATION_S,
    DecayedAverage,
    PoolError,
    Reputation,
    WorkerPool,
)


def _pool_with(worker_id: str = "w1", now: float = 0.0, **kw) -> WorkerPool:
    pool = WorkerPool()
    pool.heartbeat(
        worker_id, now, models=["m"], capacity=kw.pop("capacity", 2), coefficient=1000, **kw
    )
    pool.accept_verdict(worker_id, "v1", expires_at=now + 3600, models=["m"])
    return pool


def test_decayed_average_weighs_recent_samples_more():
    avg = DecayedAverage(half_life=DURATION_HALF_LIFE_S)
    assert avg.value() is None
    avg.add(10.0, now=0.0)
    assert avg.value() == pytest.approx(10.0)
    # One half-life later the old sample weighs 0.5 against the new one's 1.
    avg.add(1.0, now=DURATION_HALF_LIFE_S)
    assert avg.value() == pytest.approx((10 * 0.5 + 1) / 1.5)


def test_decayed_average_ignores_clock_going_backwards():
    avg = DecayedAverage(half_life=10.0)
    avg.add(4.0, now=100.0)
    avg.add(2.0, now=50.0)  # out-of-order record: no negative decay
    assert avg.value() == pytest.approx(3.0)


def test_reputation_prior_and_evidence():
    rep = Reputation()
    assert rep.score() == pytest.approx(0.9)
    for _ in range(90):
        rep.record(0.0, success=True)
    assert rep.score() == pytest.approx(0.99)  # (90 + 9) / (90 + 10)
    bad = Reputation()
    for _ in range(1000):
        bad.record(0.0, success=False)
    assert bad.score() == pytest.approx(0.05)  # floored, stays finite


def test_reputation_recovers_as_failures_decay():
    rep = Reputation(half_life=100.0)
    for _ in range(20):
        rep.record(0.0, success=False)
    low = rep.score()
    rep.record(1000.0, success=True)
    assert rep.score() > low + 0.5


def test_verdict_before_first_heartbeat_is_kept():
    pool = WorkerPool()
    pool.accept_verdict("w1", "v9", expires_at=100.0, models=["m"])
    state = pool.heartbeat("w1", 0.0, models=["m"], capacity=1, coefficient=1000)
    assert state.verdict_id == "v9"
    assert pool.placeable(state, "m", now=1.0)


def test_placeable_requires_every_condition():
    pool = _pool_with()
    state = pool.get("w1")
    assert pool.placeable(state, "m", 1.0)
    assert not pool.placeable(state, "other", 1.0)
    assert not pool.placeable(state, "m", 3600.0)  # verdict expired exactly at expiry
    assert not pool.placeable(state, "m", pool.heartbeat_ttl + 0.001)  # stale heartbeat
    pool.set_draining("w1")
    assert not pool.placeable(state, "m", 1.0)
    pool.set_draining("w1", False)
    pool.revoke_verdict("w1")
    assert not pool.placeable(state, "m", 1.0)


def test_verdict_models_restrict_advertised_models():
    pool = WorkerPool()
    pool.heartbeat("w1", 0.0, models=["m", "x"], capacity=1, coefficient=1000)
    pool.accept_verdict("w1", "v1", expires_at=100.0, models=["m"])
    assert pool.models(1.0) == {"m": 1}


def test_disabled_worker_is_not_placeable():
    pool = _pool_with(enabled=False)
    assert not pool.placeable(pool.get("w1"), "m", 1.0)
    assert pool.models(1.0) == {}


def test_older_heartbeat_seq_is_ignored():
    pool = WorkerPool()
    pool.heartbeat("w1", 0.0, models=["m"], capacity=4, coefficient=1000, seq=5)
    pool.heartbeat("w1", 1.0, models=["m"], capacity=1, coefficient=9000, seq=4)
    state = pool.get("w1")
    assert (state.capacity, state.coefficient, state.last_heartbeat) == (4, 1000, 0.0)
    pool.heartbeat("w1", 2.0, models=["m"], capacity=2, coefficient=1500, seq=6)
    assert (state.capacity, state.coefficient, state.last_heartbeat) == (2, 1500, 2.0)


def test_negative_capacity_is_refused():
    with pytest.raises(PoolError):
        WorkerPool().heartbeat("w1", 0.0, models=["m"], capacity=-1, coefficient=1000)


def test_grant_and_finish_track_running_and_duration():
    pool = _pool_with()
    state = pool.get("w1")
    pool.grant("r1", "w1", "m", now=10.0, lease_seconds=5.0)
    pool.grant("r2", "w1", "m", now=10.0, lease_seconds=5.0)
    assert state.running == 2
    with pytest.raises(PoolError):
        pool.grant("r1", "w1", "m", now=10.0, lease_seconds=5.0)
    assert pool.finish("r1", 13.0, success=True).worker_id == "w1"
    assert state.running == 1
    assert state.duration.value() == pytest.approx(3.0)
    assert pool.finish("r1", 14.0, success=True) is None  # replayed outcome: no effect
    assert state.running == 1


def test_reported_running_counts_when_larger_than_leases():
    pool = _pool_with(running=3)
    assert pool.get("w1").running == 3


def test_grant_on_unknown_worker_fails():
    with pytest.raises(PoolError):
        WorkerPool().grant("r1", "nope", "m", now=0.0, lease_seconds=1.0)


def test_expired_leases_exclude_started_ones():
    pool = _pool_with()
    pool.grant("r1", "w1", "m", now=0.0, lease_seconds=5.0)
    pool.grant("r2", "w1", "m", now=1.0, lease_seconds=5.0)
    assert pool.expired_leases(4.9) == []
    assert [le.request_id for le in pool.expired_leases(6.0)] == ["r1", "r2"]
    pool.first_chunk("r2")
    assert [le.request_id for le in pool.expired_leases(6.0)] == ["r1"]
    assert pool.first_chunk("r2").started  # idempotent


def test_reclaim_frees_the_slot_and_costs_reputation():
    pool = _pool_with()
    state = pool.get("w1")
    before = state.reputation.score()
    pool.grant("r1", "w1", "m", now=0.0, lease_seconds=5.0)
    lease = pool.reclaim("r1", now=6.0)
    assert lease is not None and lease.worker_id == "w1"
    assert state.running == 0 and pool.lease("r1") is None
    assert state.reputation.score() < before
    assert state.duration.value() is None  # a failure is not a speed sample


def test_silent_leases_are_the_leases_of_workers_that_stopped_heartbeating():
    pool = _pool_with()
    pool.heartbeat("w2", 0.0, models=["m"], capacity=2, coefficient=1000)
    pool.grant("r1", "w1", "m", now=0.0, lease_seconds=5.0)
    pool.grant("r2", "w1", "m", now=0.0, lease_seconds=5.0)
    pool.grant("r3", "w2", "m", now=0.0, lease_seconds=5.0)
    pool.first_chunk("r1")
    assert pool.silent_leases(1.0) == []
    late = pool.heartbeat_ttl + 1.0
    pool.heartbeat("w2", late, models=["m"], capacity=2, coefficient=1000)
    leases = pool.silent_leases(late)
    assert [(le.request_id, le.started) for le in leases] == [("r1", True), ("r2", False)]


def test_receipt_rejected_lowers_reputation_more_than_a_failure():
    pool = WorkerPool()
    for w in ("a", "b"):
        pool.heartbeat(w, 0.0, models=["m"], capacity=1, coefficient=1000)
    pool.receipt_rejected("a", 0.0)
    pool.grant("r", "b", "m", now=0.0, lease_seconds=1.0)
    pool.finish("r", 0.0, success=False)
    assert pool.get("a").receipts_rejected == 1
    assert pool.get("a").reputation.score() < pool.get("b").reputation.score()


def test_expected_duration_prior_then_peers_then_own():
    pool = WorkerPool()
    for w in ("a", "b"):
        pool.heartbeat(w, 0.0, models=["m"], capacity=2, coefficient=1000)
    a, b = pool.get("a"), pool.get("b")
    assert pool.expected_duration(a, "m") == PRIOR_DURATION_S
    pool.grant("r", "b", "m", now=0.0, lease_seconds=10.0)
    pool.finish("r", 2.0, success=True)
    assert pool.expected_duration(a, "m") == pytest.approx(2.0)  # learnt from its peer
    assert pool.expected_duration(b, "m") == pytest.approx(2.0)


def test_remove_forgets_worker_and_pending_verdict():
    pool = _pool_with()
    pool.remove("w1")
    assert pool.get("w1") is None and pool.workers() == []


def test_peer_mean_follows_workers_joining_leaving_and_changing_models():
    pool = WorkerPool()
    for w, seconds in (("a", 2.0), ("b", 4.0)):
        pool.heartbeat(w, 0.0, models=["m"], capacity=2, coefficient=1000)
        pool.grant(f"r-{w}", w, "m", now=0.0, lease_seconds=10.0)
        pool.finish(f"r-{w}", seconds, success=True)
    pool.heartbeat("new", 0.0, models=["m"], capacity=2, coefficient=1000)
    new = pool.get("new")
    assert pool.expected_duration(new, "m") == pytest.approx(3.0)
    pool.heartbeat("b", 1.0, models=["x"], capacity=2, coefficient=1000)  # b moved to x
    assert pool.expected_duration(new, "m") == pytest.approx(2.0)
    assert pool.expected_duration(new, "x") == pytest.approx(4.0)
    pool.remove("a")
    assert pool.expected_duration(new, "m") == PRIOR_DURATION_S
    assert not pool.advertised("nothing") and pool.advertised("x")


def test_index_follows_verdicts_capacity_price_and_draining():
    pool = _pool_with(capacity=1)
    index = pool.index("m")
    assert (len(index.members), len(index.free)) == (1, 1)
    pool.grant("r", "w1", "m", now=0.0, lease_seconds=5.0)
    assert (len(index.members), len(index.free)) == (1, 0)  # full
    pool.finish("r", 1.0, success=True)
    assert index.free.count_upto(1000) == 1
    pool.set_coefficient("w1", 2000)
    assert index.free.count_upto(1000) == 0 and index.free.count_upto(2000) == 1
    pool.set_draining("w1")
    assert len(pool.index("m").members) == 0
    pool.set_draining("w1", False)
    pool.revoke_verdict("w1")
    assert len(pool.index("m").members) == 0
