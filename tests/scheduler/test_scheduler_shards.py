"""Several scheduler instances on explicit times: shard handover through the changelog records,
and what sharing the pool without sharing leases lets through. No broker, no clock (the same
records on the real broker: test_scheduler_instances.py)."""

from __future__ import annotations

from test_service_dispatcher import (
    T0,
    beat,
    dispatcher,
    heartbeat,
    outcome,
    reservation,
)

from cocoon.core import codec
from cocoon.core.codec import models
from cocoon.scheduler.changelog import RECORD, owned_record, recovered
from cocoon.scheduler.dispatcher import Dispatcher, Phase


def hand_over(old: Dispatcher, new: Dispatcher, shards: set[int], now: float) -> list:
    """What the wiring does: the old owner's changelog records (through Avro, as on the topic),
    the old owner drops the shards, the new owner recovers the latest record per request."""
    latest: dict[str, bytes | None] = {}
    for request in old.take_changes():
        if request.phase is Phase.DONE:
            latest[request.request_id] = None
            continue
        value = owned_record(request, old.pool.lease(request.request_id), "old", now)
        latest[request.request_id] = codec.encode(value)
    old.drop_shards(shards, now)
    out: list = []
    for data in latest.values():
        if data is not None:
            item = recovered(codec.decode_model(data, reader=RECORD), shard=next(iter(shards)))
            out += new.recover(item.request, item.lease, now)
    return out


def test_the_new_owner_places_waiting_requests_and_watches_taken_over_leases():
    old = dispatcher("w-a", "w-b")
    new = dispatcher("w-a", "w-b")
    (leased,) = old.on_reservation(reservation("leased"), T0, shard=3)
    (started,) = old.on_reservation(reservation("started"), T0, shard=3)
    old.on_first_chunk("started", 1, 0)
    (done,) = old.on_reservation(reservation("done"), T0, shard=3)
    old.on_outcome(outcome("done", 1, done.worker_id, "SUCCEEDED"), T0 + 1)
    for d in (old, new):  # each worker runs 2 (capacity 2): one of ours, one foreign
        for worker in ("w-a", "w-b"):
            d.on_heartbeat(heartbeat(worker, seq=int(T0 + 1) * 10, active=2), T0 + 1)
    assert old.on_reservation(reservation("waiting"), T0 + 1, shard=3) == []

    assert hand_over(old, new, {3}, T0 + 2) == []  # the workers are still full in new's view
    assert not old.requests.keys() - {"done"}  # the ended one is remembered, the rest dropped
    assert old.tick(T0 + 30) == []  # the old owner acts on none of them any more
    assert old.pool.lease("leased") is None

    lease = new.pool.lease("leased")
    assert lease is not None and (lease.worker_id, lease.attempt) == (leased.worker_id, 1)
    assert lease.first_chunk_deadline == leased.lease_expires_at.timestamp()
    assert new.pool.lease("started").started and "done" not in new.requests
    assert new.requests["waiting"].phase is Phase.PENDING
    # A replay of a reservation whose request was taken over places nothing twice.
    assert new.on_reservation(reservation("leased"), T0 + 2, shard=3) == []

    # The first-chunk deadline is still watched: attempt 2, on the other worker.
    out = []
    for worker in ("w-a", "w-b"):  # the foreign requests ended: room for the waiting one
        out += new.on_heartbeat(heartbeat(worker, seq=int(T0 + 10) * 10), T0 + 10)
    out += new.tick(T0 + 10)
    moved = [a for a in out if isinstance(a, models.Assignment) and a.request_id == "leased"]
    assert [(a.attempt, a.worker_id) for a in moved] == [(2, started.worker_id)]
    # The waiting request was placed once, by its new owner.
    waiting = [a for a in out if isinstance(a, models.Assignment) and a.request_id == "waiting"]
    assert [a.attempt for a in waiting] == [1]


def test_a_first_chunk_the_old_owner_did_not_write_down_still_starts_the_taken_over_lease():
    """Every instance reads every first chunk: the new owner remembers those of requests it did
    not own, so a lease whose start the old owner never wrote (it died within a tick, or the
    chunk came between owners) is not placed a second time when its deadline passes."""
    old, new = dispatcher("w-a", "w-b"), dispatcher("w-a", "w-b")
    old.on_reservation(reservation("r"), T0, shard=5)
    old.on_reservation(reservation("q"), T0, shard=5)
    records = [owned_record(r, old.pool.lease(r.request_id), "old", T0) for r in old.take_changes()]
    # The workers answer both; only one chunk reaches the new owner before the takeover,
    # and the old owner wrote neither down.
    assert old.on_first_chunk("r", 1, 0) and old.on_first_chunk("q", 1, 0)
    assert not new.on_first_chunk("r", 1, 0)  # not its request (yet)
    assert not new.on_first_chunk("q", 2, 0)  # a chunk of another attempt than the lease's
    for value in records:
        item = recovered(codec.decode_model(codec.encode(value), reader=RECORD), shard=5)
        new.recover(item.request, item.lease, T0 + 1)
    assert new.pool.lease("r").started and new.requests["r"].phase is Phase.STARTED
    assert [r.request_id for r in new.take_changes()] == ["r"]  # written down by its new owner
    beat(new, T0 + 11, "w-a", "w-b")
    out = new.tick(T0 + 11)  # past both deadlines: only the one never started moves on
    assert [(a.request_id, a.attempt) for a in out if isinstance(a, models.Assignment)] == [
        ("q", 2)
    ]


def test_a_request_that_ended_is_tombstoned_and_not_recovered():
    old = dispatcher("w-a")
    old.on_reservation(reservation("r"), T0, shard=0)
    assert [r.request_id for r in old.take_changes()] == ["r"]  # written once: logged
    old.on_outcome(outcome("r", 1, "w-a", "SUCCEEDED"), T0 + 1)
    (ended,) = old.take_changes()
    assert ended.phase is Phase.DONE  # the wiring writes its tombstone
    # One that ended before it was ever written needs no tombstone.
    old.on_reservation(reservation("x", status="REJECTED"), T0)
    assert old.take_changes() == []


def test_two_owners_of_one_worker_overcommit_it_by_at_most_its_free_slots_per_other_instance():
    """Each instance counts its own leases exactly and the others' only from the worker's
    heartbeat (`foreign`). Between two heartbeats, K instances can each fill the slots the last
    heartbeat showed free: at most (K - 1) x capacity beyond it, and none once a heartbeat
    reports them (the worker-proxy queues the excess on its engine slots, it refuses none)."""
    capacity = 2
    a, b = dispatcher("w"), dispatcher("w")
    placed_a = [a.on_reservation(reservation(f"a{i}"), T0, shard=0) for i in range(3)]
    placed_b = [b.on_reservation(reservation(f"b{i}"), T0, shard=1) for i in range(3)]
    running = sum(1 for out in placed_a + placed_b if out)
    assert running == capacity + (2 - 1) * capacity  # the bound, reached

    # The next heartbeat counts all four: neither instance places more until one ends.
    for d in (a, b):
        d.on_heartbeat(heartbeat("w", seq=2, active=running), T0 + 0.5)
    assert a.pool.get("w").running == b.pool.get("w").running == running
    assert a.on_reservation(reservation("a-late"), T0 + 1, shard=0) == []
    assert b.on_reservation(reservation("b-late"), T0 + 1, shard=1) == []
    assert a.tick(T0 + 1.5) == [] and b.tick(T0 + 1.5) == []
