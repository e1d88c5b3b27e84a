"""The scheduler service on the real broker: run in-process, fed and read through Kafka.

Each test gets its own topic prefix and consumer group, publishes signed verdicts, live
heartbeats, reservations, chunks and outcomes the way the other services do, and reads what the
scheduler publishes on `inference.assignments` and `inference.outcomes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from support.dead_letters import dead_letters
from support.worker_keys import WorkerKeyring

from cocoon.attestation.registry_topic import publish_registry
from cocoon.billing.ledger import Entry
from cocoon.billing.stream import ledger_records
from cocoon.core import codec
from cocoon.core.bus import BusProducer
from cocoon.core.bus.admin import apply_topics
from cocoon.core.bus.security import aiokafka_security
from cocoon.core.catalog import dead_letter_spec, load_catalog
from cocoon.core.codec import models
from cocoon.core.verdicts import key_id, verdict_message
from cocoon.core.worker_records import sign_record
from cocoon.scheduler.service import Scheduler, Settings, build
from cocoon.worker_proxy.worker_view import read_worker_view

CATALOG = load_catalog()
TOPICS = [
    "attestation.verdicts",
    "attestation.registry",
    "worker.heartbeats",
    "billing.reservations",
    "inference.requests",
    "billing.grants",
    "inference.assignments",
    "inference.responses",
    "inference.outcomes",
    "billing.ledger",
    "scheduler.standings",
    "scheduler.leases",
    # What `cocoon worker status` also reads, for the standings test.
    "billing.earnings",
]
LEASE_S = 1.0
WAIT_S = 1.0
STALE_S = 1.5
BEAT_EVERY_S = 0.3


def _now() -> datetime:
    # Millisecond precision, as the records carry it: a verdict is signed over what is read back.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Attestor:
    """Stands in for the attestation service: signs verdicts with its own key."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.workers = WorkerKeyring()  # each worker's attested key, as in its verdict

    def verdict(
        self,
        worker_id: str,
        *,
        status: str = "TRUSTED",
        expires_in_s: float = 3600,
        model: str = "m",
    ) -> models.Verdict:
        unsigned = models.Verdict(
            verdict_id=f"v-{worker_id}-{uuid.uuid4().hex[:6]}",
            worker_id=worker_id,
            status=status,
            models=[model],
            signing_key=self.workers.signing_key(worker_id),
            hpke_public_key=b"\x02" * 32,
            hpke_suite="test-suite",
            registry_version=1,
            issued_at=_now() - timedelta(hours=2),
            expires_at=_now() + timedelta(seconds=expires_in_s),
            attestor_key_id=key_id(self.public),
            signature=b"\x00" * 64,
        )
        signature = self.key.sign(verdict_message(unsigned))
        return unsigned.model_copy(update={"signature": signature})


def heartbeat(worker_id: str, seq: int, *, coefficient: int = 1000, state: str = "READY"):
    return models.Heartbeat(
        worker_id=worker_id,
        models=["m"],
        state=state,
        max_active_requests=4,
        active_requests=0,
        coefficient=coefficient,
        work_topic=f"work.{worker_id}",
        seq=seq,
        sent_at=_now(),
    )


def reservation(
    request_id: str, *, model: str = "m", max_coefficient: int = 5000, status: str = "HELD"
):
    return models.Reservation(
        reservation_id=f"res-{request_id}",
        request_id=request_id,
        account_id="acct-1",
        model=model,
        status=status,
        amount_nanoton=1000,
        max_tokens=16,
        max_coefficient=max_coefficient,
        gateway_id="gw-test",
        deadline_at=_now() + timedelta(seconds=30),
        decided_at=_now(),
    )


def succeeded(request_id: str, worker_id: str) -> models.Outcome:
    """The worker-proxy's outcome for a request it finished (attempt 1)."""
    return models.Outcome(
        request_id=request_id,
        attempt=1,
        worker_id=worker_id,
        model="m",
        status="SUCCEEDED",
        reported_by="worker-proxy",
        duration_ms=100,
        completion_tokens=5,
        finished_at=_now(),
    )


def chunk(request_id: str, worker_id: str, attempt: int, seq: int = 0) -> models.SealedChunk:
    return models.SealedChunk(
        request_id=request_id,
        worker_id=worker_id,
        attempt=attempt,
        gateway_id="gw-test",
        seq=seq,
        final=False,
        ciphertext=b"\xaa" * 64,
        produced_at=_now(),
    )


@dataclass
class Seen:
    """What the scheduler published, read back from the broker."""

    assignments: list[models.Assignment] = field(default_factory=list)
    outcomes: list[models.Outcome] = field(default_factory=list)

    def for_request(self, request_id: str) -> list[models.Assignment]:
        return [a for a in self.assignments if a.request_id == request_id]

    def outcome(self, request_id: str) -> models.Outcome | None:
        return next((o for o in self.outcomes if o.request_id == request_id), None)


@dataclass
class Net:
    producer: BusProducer
    attestor: Attestor
    seen: Seen
    scheduler: Scheduler
    beating: dict[str, int]  # worker id -> coefficient, heartbeating while present
    seqs: dict[str, int] = field(default_factory=dict)  # per worker process, like the proxy

    async def send(self, topic: str, value: Any) -> None:
        """Send as its producer would: a worker's heartbeats and outcomes signed by its key."""
        if isinstance(value, models.Heartbeat | models.Outcome) and value.signature is None:
            value = self.attestor.workers.sign(value)
        await self.producer.send(topic, value)

    def dlq(self, topic: str) -> str:
        """The physical name of `topic`'s dead-letter topic in this test's prefix."""
        return self.scheduler.settings.topic_prefix + topic + ".dlq"

    async def until(self, predicate: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while not (result := predicate()):
            assert time.monotonic() < deadline, f"timed out; seen {self.seen}"
            await asyncio.sleep(0.02)
        return result


async def _collect(bootstrap: str, prefix: str, seen: Seen) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, **aiokafka_security())
    await consumer.start()
    try:
        parts = [
            TopicPartition(prefix + t, p)
            for t in ("inference.assignments", "inference.outcomes")
            for p in range(CATALOG[t].partitions)
        ]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        while True:
            batch = await consumer.getmany(timeout_ms=50)
            for records in batch.values():
                for record in records:
                    value = codec.decode_model(record.value)
                    if isinstance(value, models.Assignment):
                        seen.assignments.append(value)
                    else:
                        seen.outcomes.append(value)
    finally:
        await consumer.stop()


async def _beat(net: Net) -> None:
    while True:
        for worker_id, coefficient in list(net.beating.items()):
            seq = net.seqs[worker_id] = net.seqs.get(worker_id, 0) + 1
            await net.send("worker.heartbeats", heartbeat(worker_id, seq, coefficient=coefficient))
        await asyncio.sleep(BEAT_EVERY_S)


@contextlib.asynccontextmanager
async def network(
    bootstrap: str, unique_name, verdicts: Callable[[Attestor], list[models.Verdict]]
) -> AsyncIterator[Net]:
    """Topics, verdicts published before start, the scheduler running, a reader, heartbeats."""
    prefix = unique_name("sched") + "."
    specs = [CATALOG[t] for t in TOPICS]
    await asyncio.to_thread(
        apply_topics, bootstrap, specs + [dead_letter_spec(s) for s in specs], prefix=prefix
    )
    attestor = Attestor()
    seen = Seen()
    async with BusProducer(bootstrap, client_id="test", prefix=prefix) as producer:
        for v in verdicts(attestor):
            await producer.send("attestation.verdicts", v)
        scheduler = build(
            Settings(
                kafka_bootstrap=bootstrap,
                attestation_public_key=attestor.public.hex(),
                topic_prefix=prefix,
                consumer_group=unique_name("scheduler"),
                lease_seconds=LEASE_S,
                no_worker_wait_seconds=WAIT_S,
                heartbeat_stale_seconds=STALE_S,
                tick_seconds=0.05,
                standings_seconds=0.2,
            )
        )
        net = Net(producer, attestor, seen, scheduler, {})
        stopping = asyncio.Event()
        await scheduler.start()
        tasks = [
            asyncio.create_task(scheduler.run(stopping)),
            asyncio.create_task(_collect(bootstrap, prefix, seen)),
            asyncio.create_task(_beat(net)),
        ]
        try:
            # The only instance in its group: every shard is its own once the group has formed
            # (it dead-letters refused heartbeats as the owner of shard 0).
            shards = CATALOG["inference.requests"].partitions
            await net.until(lambda: len(scheduler.owned) == shards, timeout_s=30)
            yield net
        finally:
            stopping.set()
            for task in tasks[1:]:
                task.cancel()
            await asyncio.wait_for(tasks[0], 10)
            await scheduler.close()
            for task in tasks[1:]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert not tasks[0].cancelled() and tasks[0].exception() is None


def _placeable(net: Net, *workers: str) -> Callable[[], bool]:
    pool = net.scheduler.pool
    return lambda: all(
        (w := pool.get(wid)) is not None and pool.placeable(w, "m", time.time()) for wid in workers
    )


async def test_held_reservation_goes_to_an_attested_worker_only(kafka_bootstrap, unique_name):
    def verdicts(att: Attestor) -> list[models.Verdict]:
        forger = Attestor()  # signs with a key the scheduler does not pin
        return [
            att.verdict("w-good"),
            att.verdict("w-expired", expires_in_s=-60),
            forger.verdict("w-forged"),
            att.verdict("w-rejected", status="REJECTED"),
        ]

    async with network(kafka_bootstrap, unique_name, verdicts) as net:
        # The ineligible workers are cheaper, so they would win if they were let in.
        net.beating.update({"w-good": 3000, "w-expired": 500, "w-forged": 500, "w-rejected": 500})
        await net.until(_placeable(net, "w-good"))
        pool = net.scheduler.pool
        others = ("w-expired", "w-forged", "w-rejected")
        # Nothing vouches for their heartbeats (no current TRUSTED verdict): refused, not pooled.
        letters = await dead_letters(kafka_bootstrap, net.dlq("worker.heartbeats"), expect=3)
        refused = {letter.key.decode() for letter in letters}
        assert refused == set(others), letters
        assert all("untrusted_worker" in letter.error for letter in letters)
        for worker_id in others:
            assert pool.get(worker_id) is None

        # Records the scheduler cannot use are skipped without stopping it.
        await net.producer.send_raw("worker.heartbeats", b"junk", key=b"w-junk")
        await net.producer.send_raw("attestation.verdicts", b"junk", key=b"w-junk")
        bad = heartbeat("w-bad", 1).model_copy(update={"max_active_requests": -1})
        await net.send("worker.heartbeats", bad)

        sent_at = time.time()
        rids = [f"r-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
        for rid in rids:
            await net.send("billing.reservations", reservation(rid))
        await net.send("billing.reservations", reservation(rids[0]))  # a duplicate
        await net.send("billing.reservations", reservation("r-no", status="REJECTED"))
        await net.until(lambda: all(net.seen.for_request(r) for r in rids))
        await asyncio.sleep(0.5)  # room for a wrong second assignment to show up

        for rid in rids:
            (assignment,) = net.seen.for_request(rid)
            assert assignment.worker_id == "w-good"
            assert assignment.attempt == 1 and assignment.assignment_id == f"{rid}:1"
            assert assignment.work_topic == "work.w-good"
            assert assignment.gateway_id == "gw-test" and assignment.coefficient == 3000
            lease = assignment.lease_expires_at.timestamp() - assignment.assigned_at.timestamp()
            assert lease == pytest.approx(LEASE_S, abs=0.01)
            assert sent_at - 1 <= assignment.assigned_at.timestamp() <= time.time()
        assert not net.seen.for_request("r-no")
        assert not net.seen.outcomes

        # A later verdict revoking the worker takes it out of placement.
        await net.send("attestation.verdicts", net.attestor.verdict("w-good", status="REVOKED"))
        await net.until(lambda: not net.scheduler.pool.get("w-good").verdict_id)
        await net.send("billing.reservations", reservation("r-after-revoke"))
        failed = await net.until(lambda: net.seen.outcome("r-after-revoke"))
        assert (failed.status, failed.error_code) == ("FAILED", "no_worker")


async def test_lease_without_first_chunk_moves_to_the_other_worker(kafka_bootstrap, unique_name):
    async with network(
        kafka_bootstrap, unique_name, lambda a: [a.verdict("w-a"), a.verdict("w-b")]
    ) as net:
        net.beating.update({"w-a": 1000, "w-b": 1000})
        await net.until(_placeable(net, "w-a", "w-b"))

        silent, answered = "r-silent", "r-answered"
        await net.send("billing.reservations", reservation(silent))
        await net.send("billing.reservations", reservation(answered))
        first = await net.until(lambda: net.seen.for_request(answered))
        # The worker answers at once: its lease is satisfied and must not expire.
        await net.send("inference.responses", chunk(answered, first[0].worker_id, 1))

        moved = await net.until(lambda: len(net.seen.for_request(silent)) == 2, LEASE_S + 5)
        one, two = net.seen.for_request(silent)
        assert (one.attempt, two.attempt) == (1, 2)
        assert two.assignment_id == f"{silent}:2"
        assert {one.worker_id, two.worker_id} == {"w-a", "w-b"}
        assert two.assigned_at.timestamp() >= one.lease_expires_at.timestamp()
        assert moved

        await net.send("inference.responses", chunk(silent, two.worker_id, 2))
        await asyncio.sleep(LEASE_S + 0.5)  # past attempt 2's lease: nothing may happen now
        assert len(net.seen.for_request(silent)) == 2
        assert len(net.seen.for_request(answered)) == 1
        assert not net.seen.outcomes

        # The worker's own outcome frees the slot and ends the request.
        await net.send("inference.outcomes", succeeded(answered, first[0].worker_id))
        await net.until(lambda: net.scheduler.pool.lease(answered) is None)
        assert net.scheduler.pool.get(first[0].worker_id).duration.value() is not None


async def test_no_worker_unknown_model_and_price_cap(kafka_bootstrap, unique_name):
    async with network(kafka_bootstrap, unique_name, lambda a: [a.verdict("w-pricey")]) as net:
        net.beating["w-pricey"] = 4000
        await net.until(_placeable(net, "w-pricey"))

        start = time.monotonic()
        await net.send("billing.reservations", reservation("r-unknown", model="nope"))
        unknown = await net.until(lambda: net.seen.outcome("r-unknown"))
        assert unknown.error_code == "unknown_model" and unknown.status == "FAILED"
        assert time.monotonic() - start < WAIT_S  # at once, not after the wait

        await net.send("billing.reservations", reservation("r-cheap", max_coefficient=1000))
        cap = await net.until(lambda: net.seen.outcome("r-cheap"))
        assert cap.error_code == "price_cap"

        # The only worker stops: model known, nobody to run it.
        net.beating.clear()
        await net.until(lambda: not _placeable(net, "w-pricey")(), STALE_S + 3)
        start = time.monotonic()
        await net.send("billing.reservations", reservation("r-none"))
        none = await net.until(lambda: net.seen.outcome("r-none"), WAIT_S + 5)
        waited = time.monotonic() - start
        assert WAIT_S * 0.9 <= waited <= WAIT_S + 2
        assert (none.status, none.error_code, none.reported_by) == (
            "FAILED",
            "no_worker",
            "scheduler",
        )
        assert none.attempt == 1 and none.worker_id == ""
        assert not net.seen.assignments


async def test_silent_worker_mid_stream_is_reported_lost(kafka_bootstrap, unique_name):
    async with network(kafka_bootstrap, unique_name, lambda a: [a.verdict("w-a")]) as net:
        net.beating["w-a"] = 1000
        await net.until(_placeable(net, "w-a"))
        await net.send("billing.reservations", reservation("r-stream"))
        await net.until(lambda: net.seen.for_request("r-stream"))
        await net.send("inference.responses", chunk("r-stream", "w-a", 1, seq=0))
        await net.send("inference.responses", chunk("r-stream", "w-a", 1, seq=1))
        await net.until(lambda: net.scheduler.pool.lease("r-stream").started)

        stopped = time.monotonic()
        del net.beating["w-a"]
        lost = await net.until(lambda: net.seen.outcome("r-stream"), STALE_S + 5)
        assert time.monotonic() - stopped >= STALE_S - BEAT_EVERY_S
        assert (lost.status, lost.error_code) == ("WORKER_LOST", "worker_lost")
        assert (lost.worker_id, lost.attempt, lost.reported_by) == ("w-a", 1, "scheduler")
        assert not net.scheduler.pool.placeable(net.scheduler.pool.get("w-a"), "m", time.time())

        # It comes back (a restarted process: its seq starts again) and takes work again.
        net.seqs.pop("w-a")
        net.beating["w-a"] = 1000
        await net.until(_placeable(net, "w-a"))
        await net.send("billing.reservations", reservation("r-again"))
        (again,) = await net.until(lambda: net.seen.for_request("r-again"))
        assert again.worker_id == "w-a"
        assert [o.request_id for o in net.seen.outcomes] == ["r-stream"]


def rejection(worker_id: str, *, attributable: bool, reason: str) -> dict:
    """A `billing.ledger` record of a refused receipt, as billing writes it."""
    rid = uuid.uuid4().hex
    meta = {
        "receipt_id": f"{rid}:1",
        "request_id": rid,
        "worker_id": worker_id,
        "reason": reason,
        "detail": "test",
        "attributable": attributable,
    }
    entry = Entry(f"reject:{rid}", "receipt_rejected", (), int(time.time() * 1000), meta)
    (record,) = ledger_records(entry, 0)
    return record


async def test_receipts_billing_refused_cost_the_worker_placements(kafka_bootstrap, unique_name):
    async with network(
        kafka_bootstrap, unique_name, lambda a: [a.verdict("w-a"), a.verdict("w-b")]
    ) as net:
        net.beating.update({"w-a": 1000, "w-b": 1000})
        await net.until(_placeable(net, "w-a", "w-b"))
        pool = net.scheduler.pool
        before = {w: pool.get(w).reputation.score() for w in ("w-a", "w-b")}

        # Neither a forgery in w-b's name nor a late (superseded) receipt is held against it.
        for reason in ("bad_signature", "superseded_attempt"):
            record = rejection("w-b", attributable=False, reason=reason)
            await net.producer.send("billing.ledger", record, record="cocoon.billing.LedgerEntry")
        for _ in range(3):
            record = rejection("w-a", attributable=True, reason="tokens_beyond_hold")
            await net.producer.send("billing.ledger", record, record="cocoon.billing.LedgerEntry")
        await net.until(lambda: pool.get("w-a").receipts_rejected == 3)
        await asyncio.sleep(0.3)  # room for the w-b records, read in the same feed
        assert pool.get("w-b").receipts_rejected == 0
        assert pool.get("w-b").reputation.score() == pytest.approx(before["w-b"], rel=0.01)
        assert pool.get("w-a").reputation.score() < before["w-a"] / 2

        rids = [f"r-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
        for rid in rids:  # one at a time: each finishes before the next is placed
            await net.send("billing.reservations", reservation(rid))
            (assignment,) = await net.until(lambda rid=rid: net.seen.for_request(rid))
            assert assignment.worker_id == "w-b"
            await net.send("inference.outcomes", succeeded(rid, "w-b"))
            await net.until(lambda rid=rid: pool.lease(rid) is None)

        # Each owner sees it in `cocoon worker status`: the scheduler's standing of its worker.
        async def shown(worker_id: str, ready: Callable[[dict], bool]) -> dict:
            prefix = net.scheduler.settings.topic_prefix
            deadline = time.monotonic() + 15
            while True:
                view = await read_worker_view(kafka_bootstrap, worker_id, prefix=prefix)
                summary = view.summary()
                if ready(summary) or time.monotonic() > deadline:
                    return summary
                await asyncio.sleep(0.2)

        penalised = await shown("w-a", lambda s: s["receipts_rejected"] == 3)
        clean = await shown("w-b", lambda s: s["typical_request_s"] is not None)
        assert penalised["receipts_rejected"] == 3, penalised
        assert penalised["reputation"] == pytest.approx(
            pool.get("w-a").reputation.score(), abs=1e-3
        )
        assert clean["typical_request_s"] is not None, clean
        assert penalised["reputation"] < clean["reputation"]
        assert clean["receipts_rejected"] == 0 and clean["reputation"] > 0.5


async def test_the_registry_coefficient_is_what_a_worker_is_placed_and_paid_at(
    kafka_bootstrap, unique_name
):
    async with network(kafka_bootstrap, unique_name, lambda a: [a.verdict("w-claims")]) as net:
        net.beating["w-claims"] = 500  # the worker's heartbeats claim 0.5x
        await net.until(_placeable(net, "w-claims"))
        prefix = net.scheduler.settings.topic_prefix
        await publish_registry(
            kafka_bootstrap,
            lambda r: [r.set_worker("w-claims", coefficient=3000)],
            prefix=prefix,
            updated_by="test",
        )
        await net.until(lambda: net.scheduler.pool.get("w-claims").coefficient == 3000)
        # A client capped at 1.0x is not placed on a 3.0x worker, whatever it claims.
        await net.send("billing.reservations", reservation("r-capped", max_coefficient=1000))
        assert (await net.until(lambda: net.seen.outcome("r-capped"))).error_code == "price_cap"
        await net.send("billing.reservations", reservation("r-ok", max_coefficient=4000))
        (placed,) = await net.until(lambda: net.seen.for_request("r-ok"))
        assert placed.coefficient == 3000  # the receipt is signed at this, as billing expects


async def test_forged_heartbeats_and_outcomes_change_nothing(kafka_bootstrap, unique_name):
    """Another attested worker (or anyone) writing records in w-real's name: the attack from
    issue 12 (DISABLED heartbeats with a high seq) and a forged FAILED outcome. The scheduler
    refuses each to the dead-letter topic with its reason; w-real keeps being placed."""
    async with network(
        kafka_bootstrap, unique_name, lambda a: [a.verdict("w-real"), a.verdict("w-evil")]
    ) as net:
        net.beating["w-real"] = 1000  # w-evil is attested too, but sends no heartbeat of its own
        await net.until(_placeable(net, "w-real"))
        evil = net.attestor.workers.keys("w-evil")  # a real attested key, just not w-real's
        forged = heartbeat("w-real", 10**9, state="DISABLED")
        for _ in range(5):
            await net.send("worker.heartbeats", sign_record(evil, forged))
            await net.producer.send("worker.heartbeats", forged)  # unsigned
            await asyncio.sleep(BEAT_EVERY_S)

        letters = await dead_letters(kafka_bootstrap, net.dlq("worker.heartbeats"), expect=10)
        assert len(letters) == 10 and {letter.key for letter in letters} == {b"w-real"}
        reasons = sorted(letter.error.split(": ")[1] for letter in letters)
        assert reasons == ["bad_record_signature"] * 5 + ["unsigned_record"] * 5
        assert {letter.reason for letter in letters} == {"REJECTED"}
        state = net.scheduler.pool.get("w-real")
        assert state.enabled and state.heartbeat_seq < 1000  # the real heartbeats still count
        assert _placeable(net, "w-real")()

        # Placed on w-real; a FAILED outcome in its name ends neither the attempt nor the lease.
        await net.send("billing.reservations", reservation("r-forged"))
        (assignment,) = await net.until(lambda: net.seen.for_request("r-forged"))
        assert assignment.worker_id == "w-real"
        await net.send("inference.responses", chunk("r-forged", "w-real", 1))
        reputation = net.scheduler.pool.get("w-real").reputation.score()
        failed = succeeded("r-forged", "w-real").model_copy(
            update={"status": "FAILED", "error_code": "engine_error"}
        )
        await net.send("inference.outcomes", sign_record(evil, failed))
        await net.producer.send("inference.outcomes", failed)  # unsigned
        letters = await dead_letters(kafka_bootstrap, net.dlq("inference.outcomes"), expect=2)
        assert sorted(letter.error.split(": ")[1] for letter in letters) == [
            "bad_record_signature",
            "unsigned_record",
        ]
        assert {letter.consumer_group for letter in letters} == {
            net.scheduler.settings.consumer_group
        }
        assert net.scheduler.pool.lease("r-forged") is not None
        assert net.scheduler.pool.get("w-real").reputation.score() == reputation

        # The worker's own outcome still ends it.
        await net.send("inference.outcomes", succeeded("r-forged", "w-real"))
        await net.until(lambda: net.scheduler.pool.lease("r-forged") is None)
        assert not [o for o in net.seen.outcomes if o.reported_by == "scheduler"]
