"""What only time changes, kept as deadlines, gives the same answers as a pass over everything.

The pool finds expired leases, silent workers and expired verdicts from deadlines (index.py's
`Deadlines`) instead of walking every lease and worker on each tick. These tests drive it with
random histories and compare every answer with the definition, computed by brute force.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.scheduler.index import Deadlines
from cocoon.scheduler.pool import WorkerPool

WORKERS = ["w0", "w1"]
TTL = 15.0
# Times on and around the boundaries (a heartbeat exactly TTL old is still fresh), so few
# examples reach them.
_seconds = st.sampled_from([0.0, 0.1, 1.0, 5.0, 14.9, 15.0, 15.1, 30.0])

_op = st.one_of(
    st.tuples(st.just("advance"), _seconds),
    st.tuples(st.just("heartbeat"), st.sampled_from(WORKERS), _seconds),  # its age
    st.tuples(st.just("verdict"), st.sampled_from(WORKERS), _seconds.map(lambda s: s - 5)),  # ttl
    st.tuples(st.just("revoke"), st.sampled_from(WORKERS)),
    st.tuples(st.just("drain"), st.sampled_from(WORKERS), st.booleans()),
    st.tuples(st.just("grant"), st.sampled_from(WORKERS), _seconds.map(lambda s: s + 0.5)),
    # The same request placed again (the dispatcher re-places under the same id).
    st.tuples(st.just("regrant"), st.integers(0, 30), st.sampled_from(WORKERS), _seconds),
    st.tuples(st.just("first_chunk"), st.integers(0, 30)),
    st.tuples(st.just("finish"), st.integers(0, 30)),
    st.tuples(st.just("remove"), st.sampled_from(WORKERS)),
)


def _apply(pool: WorkerPool, op: tuple, now: float, granted: list[str]) -> float:
    match op:
        case ("advance", dt):
            return now + dt
        case ("heartbeat", wid, age):
            pool.heartbeat(wid, now - age, models=["m"], capacity=8, coefficient=1000)
        case ("verdict", wid, ttl):
            pool.accept_verdict(wid, f"v-{wid}-{now}", now + ttl, ["m"])
        case ("revoke", wid):
            pool.revoke_verdict(wid)
        case ("drain", wid, draining) if pool.get(wid) is not None:
            pool.set_draining(wid, draining)
        case ("grant", wid, seconds) if pool.get(wid) is not None:
            rid = f"r{len(granted)}"
            pool.grant(rid, wid, "m", now, lease_seconds=seconds)
            granted.append(rid)
        case ("regrant", i, wid, seconds) if i < len(granted) and pool.get(wid) is not None:
            if pool.lease(granted[i]) is None:
                pool.grant(granted[i], wid, "m", now, lease_seconds=seconds + 0.5, attempt=2)
        case ("first_chunk", i) if i < len(granted):
            pool.first_chunk(granted[i])
        case ("finish", i) if i < len(granted):
            pool.finish(granted[i], now, success=True)
        case ("remove", wid):
            pool.remove(wid)
    return now


def _leases(pool: WorkerPool, granted: list[str]):
    return [lease for rid in granted if (lease := pool.lease(rid)) is not None]


@settings(max_examples=1000, deadline=None)
@given(ops=st.lists(_op, max_size=40))
def test_deadlines_answer_as_a_pass_over_every_lease_and_worker_would(ops):
    pool = WorkerPool(heartbeat_ttl=TTL)
    now, granted = 1000.0, []
    for op in ops:
        now = _apply(pool, op, now, granted)
        leases = _leases(pool, granted)
        expired = sorted(
            (le for le in leases if not le.started and le.first_chunk_deadline <= now),
            key=lambda le: (le.first_chunk_deadline, le.request_id),
        )
        assert pool.expired_leases(now) == expired
        silent = sorted(
            (
                le
                for le in leases
                if (w := pool.get(le.worker_id)) is None or not pool.heartbeat_fresh(w, now)
            ),
            key=lambda le: le.request_id,
        )
        assert pool.silent_leases(now) == silent
        placeable = {w.worker_id for w in pool.workers("m") if pool.placeable(w, "m", now)}
        assert pool.models(now) == ({"m": len(placeable)} if placeable else {})
        # After the deadlines ran, the index holds exactly the placeable workers.
        members = {wid for _, wid in pool.index("m").members.ascending()}
        assert members == placeable
        started = sum(1 for le in leases if le.started)
        assert pool.lease_counts() == (len(leases) - started, started)


def test_a_silent_worker_leaves_the_index_when_its_deadline_comes_and_returns_when_it_beats():
    pool = WorkerPool(heartbeat_ttl=TTL)
    for wid in ("a", "b"):
        pool.heartbeat(wid, 0.0, models=["m"], capacity=2, coefficient=1000)
        pool.accept_verdict(wid, f"v-{wid}", 100.0, ["m"])
    pool.heartbeat("b", 10.0, models=["m"], capacity=2, coefficient=1000)
    assert pool.models(TTL) == {"m": 2}  # a is still fresh at exactly its ttl
    assert pool.models(TTL + 0.1) == {"m": 1}
    assert [wid for _, wid in pool.index("m").members.ascending()] == ["b"]
    pool.heartbeat("a", TTL + 0.2, models=["m"], capacity=2, coefficient=1000)
    assert pool.models(TTL + 0.3) == {"m": 2}
    assert pool.models(100.0) == {}  # both verdicts expired


def test_deadlines_fire_once_at_their_earliest_time():
    deadlines = Deadlines()
    deadlines.arm("a", 5.0)
    deadlines.arm("a", 9.0)  # later: the earlier entry stays, its handler re-arms if needed
    deadlines.arm("b", 3.0)
    deadlines.arm("b", 1.0)  # earlier: it fires then, and only once
    assert deadlines.due(0.5) == []
    assert deadlines.due(1.0) == ["b"]
    assert deadlines.due(5.0) == ["a"]
    assert deadlines.due(100.0) == [] and len(deadlines) == 0


def test_a_request_placed_again_expires_at_its_new_deadline_not_its_first():
    pool = WorkerPool(heartbeat_ttl=TTL)
    for wid in ("a", "b"):
        pool.heartbeat(wid, 0.0, models=["m"], capacity=2, coefficient=1000)
    pool.grant("r", "a", "m", 0.0, lease_seconds=5.0)
    assert [le.attempt for le in pool.expired_leases(5.0)] == [1]
    pool.reclaim("r", 5.0)
    pool.grant("r", "b", "m", 5.0, lease_seconds=5.0, attempt=2)  # deadline 10
    assert pool.expired_leases(6.0) == []
    assert [le.attempt for le in pool.expired_leases(10.0)] == [2]
