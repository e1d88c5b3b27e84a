"""What the scheduler publishes about each worker (scheduler.standings), and when."""

from __future__ import annotations

import pytest

from cocoon.core import codec
from cocoon.scheduler.pool import WorkerPool
from cocoon.scheduler.standings import StandingsPublisher


def _pool(*workers: str) -> WorkerPool:
    pool = WorkerPool()
    for worker_id in workers:
        pool.heartbeat(worker_id, 0.0, models=["m"], capacity=2, coefficient=1000)
        pool.accept_verdict(worker_id, "v1", expires_at=3600.0, models=["m"])
    return pool


def test_a_standing_is_the_pool_s_numbers_and_encodes():
    pool = _pool("w1")
    pool.grant("r1", "w1", "m", now=0.0, lease_seconds=5.0)
    pool.reclaim("r1", now=6.0)  # an expired lease: the worker answers for it
    (record,) = StandingsPublisher("scheduler-a").due(pool.workers(), now=6.0)
    state = pool.get("w1")
    assert record.worker_id == "w1" and record.scheduler_instance == "scheduler-a"
    assert record.reputation == pytest.approx(state.reputation.score(), abs=1e-3)
    assert record.reputation < 0.9  # below the prior: the expired lease counts
    assert record.failures == pytest.approx(1.0) and record.cooldown_penalty > 1.0
    assert record.typical_seconds is None  # a failure is not a speed sample
    assert codec.decode_model(codec.encode(record)) == record  # valid against the contract


def test_only_standings_that_moved_are_sent_again():
    pool = _pool("w1", "w2")
    publisher = StandingsPublisher("scheduler-a")
    assert {r.worker_id for r in publisher.due(pool.workers(), now=1.0)} == {"w1", "w2"}
    assert publisher.due(pool.workers(), now=2.0) == []  # nothing changed: nothing sent
    pool.get("w2").reputation.record(3.0, success=False)
    assert [r.worker_id for r in publisher.due(pool.workers(), now=3.0)] == ["w2"]
