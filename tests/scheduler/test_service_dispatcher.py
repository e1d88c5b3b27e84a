"""The scheduler's request state machine on explicit times: no broker, no clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cocoon.core.codec import models
from cocoon.scheduler.dispatcher import Dispatcher, Phase, Timing
from cocoon.scheduler.placement import choose_worker
from cocoon.scheduler.pool import WorkerPool

T0 = 1_800_000_000.0  # unix seconds; verdicts expire relative to it
TIMING = Timing(lease_seconds=10, no_worker_wait_seconds=5, max_attempts=3, remember_seconds=60)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def verdict(worker_id: str, expires: float = T0 + 3600, model: str = "m") -> models.Verdict:
    return models.Verdict(
        verdict_id=f"v-{worker_id}",
        worker_id=worker_id,
        status="TRUSTED",
        models=[model],
        registry_version=1,
        issued_at=at(T0 - 60),
        expires_at=at(expires),
        attestor_key_id="att-x",
        signature=b"\x00" * 64,
        signing_key=b"\x01" * 32,  # a verdict without the worker's key admits nothing
    )


def heartbeat(
    worker_id: str, seq: int = 1, coefficient: int = 1000, state: str = "READY", active: int = 0
):
    return models.Heartbeat(
        worker_id=worker_id,
        models=["m"],
        state=state,
        max_active_requests=2,
        active_requests=active,
        coefficient=coefficient,
        work_topic=f"work.{worker_id}",
        seq=seq,
        sent_at=at(T0),
    )


def reservation(rid: str, *, status: str = "HELD", deadline: float = T0 + 120, model: str = "m"):
    return models.Reservation(
        reservation_id=f"res-{rid}",
        request_id=rid,
        account_id="a",
        model=model,
        status=status,
        amount_nanoton=1,
        max_tokens=8,
        max_coefficient=5000,
        gateway_id="gw",
        deadline_at=at(deadline),
        decided_at=at(T0),
    )


def outcome(rid: str, attempt: int, worker: str, status: str, by: str = "worker-proxy"):
    return models.Outcome(
        request_id=rid,
        attempt=attempt,
        worker_id=worker,
        model="m",
        status=status,
        reported_by=by,
        duration_ms=1,
        completion_tokens=1,
        finished_at=at(T0),
    )


def dispatcher(*workers: str, timing: Timing = TIMING) -> Dispatcher:
    d = Dispatcher(WorkerPool(heartbeat_ttl=6), timing)
    for w in workers:
        d.on_verdict(w, verdict(w), accepted=True)
        d.on_heartbeat(heartbeat(w), T0)
    return d


def beat(d: Dispatcher, now: float, *workers: str) -> None:
    for w in workers:
        d.on_heartbeat(heartbeat(w, seq=int(now * 10)), now)


def test_a_replayed_reservation_is_placed_once():
    d = dispatcher("w-a")
    (first,) = d.on_reservation(reservation("r1"), T0)
    assert (first.assignment_id, first.worker_id, first.attempt) == ("r1:1", "w-a", 1)
    assert first.lease_expires_at == at(T0 + 10)
    assert d.on_reservation(reservation("r1"), T0 + 1) == []
    assert d.on_reservation(reservation("r2", status="REJECTED"), T0) == []
    assert d.on_reservation(reservation("r3", deadline=T0 - 1), T0) == []
    assert d.tick(T0 + 1) == []


def test_lease_expiry_moves_on_then_gives_up_after_max_attempts():
    d = dispatcher("w-a", "w-b", "w-c", timing=Timing(lease_seconds=10, max_attempts=2))
    (one,) = d.on_reservation(reservation("r"), T0)
    beat(d, T0 + 9, "w-a", "w-b", "w-c")
    assert d.tick(T0 + 9.9) == []
    (two,) = d.tick(T0 + 10)
    assert (two.attempt, two.assignment_id) == (2, "r:2") and two.worker_id != one.worker_id
    beat(d, T0 + 19, "w-a", "w-b", "w-c")
    (failed,) = d.tick(T0 + 20)
    assert (failed.status, failed.error_code, failed.attempt) == ("FAILED", "lease_expired", 2)
    assert failed.worker_id == two.worker_id and failed.reported_by == "scheduler"
    assert d.requests["r"].phase is Phase.DONE
    assert d.pool.lease("r") is None
    # Both tried workers paid for it in reputation; the untried one did not.
    reps = {w.worker_id: w.reputation.score() for w in d.pool.workers()}
    assert reps[one.worker_id] < reps["w-c"] and reps[two.worker_id] < reps["w-c"]


def test_expired_lease_with_nobody_else_waits_then_fails():
    d = dispatcher("w-a")
    d.on_reservation(reservation("r"), T0)
    beat(d, T0 + 10, "w-a")
    assert d.tick(T0 + 10) == []  # w-a was tried; waiting for another worker
    assert d.requests["r"].phase is Phase.PENDING
    beat(d, T0 + 14, "w-a")
    assert d.tick(T0 + 14.9) == []
    (failed,) = d.tick(T0 + 15)
    assert (failed.error_code, failed.attempt) == ("lease_expired", 1)


def test_first_chunk_holds_the_lease_only_for_the_current_attempt():
    d = dispatcher("w-a", "w-b")
    d.on_reservation(reservation("r"), T0)
    beat(d, T0 + 10, "w-a", "w-b")
    (two,) = d.tick(T0 + 10)
    assert not d.on_first_chunk("r", 1, 0)  # the superseded attempt's worker woke up
    assert not d.on_first_chunk("r", 2, 3)  # not a first chunk
    assert d.on_first_chunk("r", 2, 0)
    assert not d.on_first_chunk("r", 2, 0)  # idempotent
    beat(d, T0 + 25, "w-a", "w-b")
    assert d.tick(T0 + 25) == []  # started: the lease can no longer expire
    assert d.requests["r"].phase is Phase.STARTED and two.attempt == 2


def test_silent_worker_loses_started_work_and_hands_on_unstarted_work():
    d = dispatcher("w-a", "w-b")
    d.on_reservation(reservation("started"), T0)  # w-a (tie -> lower id)
    d.on_reservation(reservation("waiting"), T0)  # w-b (w-a is busier)
    d.on_first_chunk("started", 1, 0)
    beat(d, T0 + 5, "w-b")  # w-a falls silent after T0
    out = d.tick(T0 + 6.5)  # past the 6 s heartbeat TTL, before the 10 s lease
    (lost,) = [r for r in out if isinstance(r, models.Outcome)]
    assert (lost.request_id, lost.status, lost.error_code) == (
        "started",
        "WORKER_LOST",
        "worker_lost",
    )
    assert lost.worker_id == "w-a"
    d.on_reservation(reservation("third"), T0 + 6.5)
    assert d.pool.lease("third").worker_id == "w-b"  # w-a is out of the pool

    # Now w-b goes silent with unstarted work: it moves to w-a, which is back.
    d2 = dispatcher("w-a", "w-b")
    d2.on_reservation(reservation("q"), T0)
    beat(d2, T0 + 5, "w-b")
    (moved,) = d2.tick(T0 + 6.5)
    assert (moved.worker_id, moved.attempt) == ("w-b", 2)


def test_outcomes_free_slots_learn_and_end_requests():
    d = dispatcher("w-a")
    d.on_reservation(reservation("ok"), T0)
    d.on_reservation(reservation("gone"), T0)
    before = d.pool.get("w-a").reputation.score()
    d.on_outcome(outcome("ok", 1, "w-a", "SUCCEEDED", by="scheduler"), T0 + 1)  # our own echo
    assert d.pool.lease("ok") is not None
    d.on_outcome(outcome("ok", 2, "w-a", "SUCCEEDED"), T0 + 1)  # not the current attempt
    assert d.pool.lease("ok") is not None
    d.on_outcome(outcome("ok", 1, "w-a", "SUCCEEDED"), T0 + 3)
    d.on_outcome(outcome("gone", 1, "w-a", "CANCELLED", by="gateway"), T0 + 3)
    state = d.pool.get("w-a")
    assert not state.leases and state.duration.value() == pytest.approx(3)
    assert state.reputation.score() > before  # one success; the cancellation is not held against it
    d.on_outcome(outcome("ok", 1, "w-a", "FAILED"), T0 + 4)  # replayed late: no effect
    assert state.reputation.score() > before
    assert d.requests["ok"].phase is d.requests["gone"].phase is Phase.DONE


def test_a_waiting_request_is_placed_as_soon_as_a_worker_heartbeats():
    d = dispatcher()
    d.on_verdict("w-a", verdict("w-a"), accepted=True)
    assert d.on_reservation(reservation("r"), T0) == []  # model known from the verdict: wait
    (placed,) = d.on_heartbeat(heartbeat("w-a"), T0 + 1)
    assert placed.worker_id == "w-a"


def test_unknown_model_fails_at_once_and_placement_misses_fail_after_the_wait():
    d = dispatcher("w-a")
    (unknown,) = d.on_reservation(reservation("u", model="other"), T0)
    assert unknown.error_code == "unknown_model"
    d.on_verdict("w-a", None, accepted=False)  # tombstone while idle: forgotten
    assert d.pool.get("w-a") is None
    assert d.on_reservation(reservation("n"), T0) == []
    (none,) = d.tick(T0 + 5)
    assert (none.error_code, none.duration_ms) == ("no_worker", 5000)


def test_tombstone_keeps_a_busy_worker_tracked_but_unplaceable():
    d = dispatcher("w-a")
    d.on_reservation(reservation("r"), T0)
    d.on_verdict("w-a", None, accepted=False)
    assert d.pool.get("w-a") is not None and d.pool.get("w-a").verdict_id is None
    assert d.on_reservation(reservation("s"), T0) == []


def test_expired_verdict_is_never_placed_even_if_accepted_earlier():
    d = Dispatcher(WorkerPool(heartbeat_ttl=6), TIMING)
    d.on_verdict("w-old", verdict("w-old", expires=T0 + 1), accepted=True)
    d.on_heartbeat(heartbeat("w-old", coefficient=1), T0)
    d.on_verdict("w-new", verdict("w-new"), accepted=True)
    d.on_heartbeat(heartbeat("w-new", coefficient=4000), T0)
    (placed,) = d.on_reservation(reservation("r"), T0 + 2)
    assert placed.worker_id == "w-new"


def test_finished_requests_are_forgotten_after_a_while():
    d = dispatcher("w-a")
    d.on_reservation(reservation("r"), T0)
    d.on_outcome(outcome("r", 1, "w-a", "SUCCEEDED"), T0 + 1)
    d.tick(T0 + 30)
    assert "r" in d.requests  # still remembered: a replay is dropped
    d.tick(T0 + 62)
    assert "r" not in d.requests


def test_price_cap_is_reported_at_once_with_the_lowest_coefficient():
    d = dispatcher("w-a")
    d.on_heartbeat(heartbeat("w-a", seq=2, coefficient=8000), T0)
    (cap,) = d.on_reservation(reservation("r"), T0)
    assert cap.error_code == "price_cap" and cap.min_coefficient == 8000
    assert d.pool.get("w-a").coefficient == 8000
    assert cap.duration_ms == 0


def test_a_busy_worker_within_the_price_cap_is_waited_for():
    d = dispatcher("w-a", "w-b")  # w-b costs more than the cap, w-a is within it but busy
    d.on_heartbeat(heartbeat("w-b", seq=2, coefficient=8000), T0)
    for rid in ("r1", "r2"):
        (placed,) = d.on_reservation(reservation(rid), T0)
        assert placed.worker_id == "w-a"
    assert d.on_reservation(reservation("r3"), T0) == []  # queued, not refused
    (placed,) = d.on_outcome(outcome("r1", 1, "w-a", "SUCCEEDED"), T0 + 1)
    assert placed.request_id == "r3" and placed.worker_id == "w-a"


def test_an_outcome_places_a_request_waiting_for_capacity_at_once():
    d = dispatcher("w-a")  # capacity 2
    for rid in ("r1", "r2"):
        (placed,) = d.on_reservation(reservation(rid), T0)
        assert placed.worker_id == "w-a"
    assert d.on_reservation(reservation("r3"), T0) == []  # full: waits
    (placed,) = d.on_outcome(outcome("r1", 1, "w-a", "SUCCEEDED"), T0 + 1)
    assert placed.request_id == "r3" and placed.worker_id == "w-a"


def test_a_request_queues_while_its_workers_are_busy_but_not_while_there_are_none():
    timing = Timing(lease_seconds=100, no_worker_wait_seconds=5, busy_wait_seconds=30)
    d = dispatcher("w-a", timing=timing)  # capacity 2
    for rid in ("r1", "r2"):
        d.on_reservation(reservation(rid), T0)
    assert d.on_reservation(reservation("r3"), T0) == []  # full
    beat(d, T0 + 10, "w-a")
    assert d.tick(T0 + 10) == []  # past the no-worker wait: still queued, not a 503
    beat(d, T0 + 20, "w-a")
    (placed,) = d.on_outcome(outcome("r1", 1, "w-a", "SUCCEEDED"), T0 + 20)
    assert placed.request_id == "r3"
    # Queued past the busy wait: fails as no_worker (the gateway's 503).
    assert d.on_reservation(reservation("r4"), T0 + 20) == []
    for t in (25, 30, 35, 40, 45, 49):  # alive and busy all along
        beat(d, T0 + t, "w-a")
        assert d.tick(T0 + t) == []
    (failed,) = d.on_heartbeat(heartbeat("w-a", seq=500), T0 + 50) + d.tick(T0 + 50)
    assert (failed.request_id, failed.error_code) == ("r4", "no_worker")
    # No worker at all for the model: the short wait applies.
    d2 = dispatcher(timing=timing)
    d2.known_models.add("m")
    assert d2.on_reservation(reservation("r5"), T0) == []
    (gone,) = d2.tick(T0 + 5)
    assert (gone.request_id, gone.error_code) == ("r5", "no_worker")


def request(rid: str, grant_id: str | None) -> models.InferenceRequest:
    return models.InferenceRequest(
        request_id=rid,
        account_id="a",
        model="m",
        max_tokens=8,
        prompt_bytes=10,
        max_coefficient=5000,
        stream=True,
        channel="HTTP",
        gateway_id="gw",
        created_at=at(T0),
        deadline_at=at(T0 + 120),
        grant_id=grant_id,
    )


def test_a_granted_request_is_placed_at_once_any_other_waits_for_its_reservation():
    d = dispatcher("w1")
    assert d.on_request(request("r-plain", None), T0) == []
    assert "r-plain" not in d.requests
    placed = d.on_request(request("r-granted", "g-1"), T0)
    assert [(a.request_id, a.attempt) for a in placed] == [("r-granted", 1)]
    # Billing's reservation for the same request (if it sends one) places nothing again.
    assert d.on_reservation(reservation("r-granted"), T0) == []
    assert d.on_request(request("r-granted", "g-1"), T0) == []


def test_a_granted_request_billing_refused_is_taken_back_and_never_placed_later():
    d = dispatcher("w1")
    d.on_request(request("r-1", "g-1"), T0)
    assert d.pool.lease("r-1") is not None
    d.on_reservation(reservation("r-1", status="REJECTED"), T0 + 0.01)
    assert d.pool.lease("r-1") is None and d.requests["r-1"].phase is Phase.DONE
    # Refused before the request itself was read: a late copy is not placed either.
    d.on_reservation(reservation("r-2", status="REJECTED"), T0)
    assert d.on_request(request("r-2", "g-1"), T0 + 0.01) == []


def test_the_registry_coefficient_wins_over_the_heartbeat_for_caps_and_assignments():
    d = dispatcher("w1")  # heartbeats 1.0x
    d.on_registry_coefficient("w1", 6000)
    # The client's cap (5000 = 5.0x) is below the registry's 6.0x: refused, naming 6.0x.
    (refused,) = d.on_reservation(reservation("r-1"), T0)
    assert (refused.error_code, refused.min_coefficient) == ("price_cap", 6000)
    beat(d, T0 + 0.1, "w1")  # the worker keeps claiming 1.0x: still the registry's
    assert d.pool.get("w1").coefficient == 6000
    d.on_registry_coefficient("w1", 2000)
    (placed,) = d.on_reservation(reservation("r-2"), T0 + 0.2)
    assert (placed.worker_id, placed.coefficient) == ("w1", 2000)
    # Its entry removed: the heartbeat's own figure counts again, from the next heartbeat.
    d.on_registry_coefficient("w1", None)
    beat(d, T0 + 0.3, "w1")
    assert d.pool.get("w1").coefficient == 1000


# ---- the three faults of issue 14 ---------------------------------------------------------


def test_a_slot_freed_between_heartbeats_is_free_at_once():
    d = dispatcher("w-a")  # capacity 2
    for rid in ("r1", "r2"):
        d.on_reservation(reservation(rid), T0)
    # The worker reports both of our requests running; then one ends before its next heartbeat.
    d.on_heartbeat(heartbeat("w-a", seq=2, active=2), T0 + 0.5)
    assert d.on_reservation(reservation("r3"), T0 + 0.6) == []  # full: queued
    (placed,) = d.on_outcome(outcome("r1", 1, "w-a", "SUCCEEDED"), T0 + 1.0)
    assert (placed.request_id, placed.worker_id) == ("r3", "w-a")


def test_a_heartbeat_sent_before_an_outcome_does_not_refill_the_slot():
    d = dispatcher("w-a")
    for rid in ("r1", "r2"):
        d.on_reservation(reservation(rid), T0)
    d.on_outcome(outcome("r1", 1, "w-a", "SUCCEEDED"), T0 + 1.0)
    # Read after the outcome, sent before it: it still counts r1, which is over.
    d.on_heartbeat(heartbeat("w-a", seq=2, active=2), T0 + 0.9)
    assert d.pool.get("w-a").running == 1
    # Work that is not ours (e.g. a previous scheduler instance's) is counted on top of ours.
    d.on_heartbeat(heartbeat("w-a", seq=3, active=2), T0 + 1.1)
    assert d.pool.get("w-a").running == 2
    assert d.on_reservation(reservation("r3"), T0 + 1.2) == []


def test_waiting_requests_are_woken_by_a_freed_slot_not_retried_on_every_event():
    calls = []

    def counting_choose_worker(*args, **kwargs):
        calls.append(args[1])
        return choose_worker(*args, **kwargs)

    timing = Timing(lease_seconds=100, busy_wait_seconds=60)
    d = dispatcher("w-a", "w-b", timing=timing)  # capacity 2 each
    d.choose = counting_choose_worker
    for i in range(4):
        d.on_reservation(reservation(f"run{i}"), T0)
    for i in range(50):
        assert d.on_reservation(reservation(f"wait{i}"), T0) == []
    calls.clear()
    for t in (0.2, 0.4, 0.6):  # busy workers heartbeat: nobody can be placed, nobody tried
        beat(d, T0 + t, "w-a", "w-b")
        assert d.tick(T0 + t) == []
    assert calls == []
    (placed,) = d.on_outcome(outcome("run0", 1, "w-a", "SUCCEEDED"), T0 + 0.7)
    assert placed.request_id == "wait0"  # the oldest waiting request
    assert len(calls) == 2  # the one placed, and the next one finding everybody busy again
    calls.clear()
    # The tick looks at each waiting request once a second, not on every tick: the 48 last
    # seen at T0 (wait1 was looked at by the outcome's wake, 0.8 s ago).
    assert d.tick(T0 + 1.5) == []
    assert len(calls) == 48
    calls.clear()
    assert d.tick(T0 + 1.6) == [] and calls == []
