"""The scheduler's Kafka wiring: `cocoon run scheduler`.

Reads (see docs/architecture.md, step 4 and 10):

* `attestation.verdicts` from the beginning, no group: every verdict's signature is checked
  against the pinned attestation key; only TRUSTED, unexpired, correctly signed verdicts admit a
  worker; anything else (and a tombstone) takes it out of placement.
* `attestation.registry` from the beginning, no group: a worker's `worker:<id>` entry sets the
  price coefficient it is placed (and paid) at, over what its heartbeats say.
* `worker.heartbeats` from `heartbeat_stale_seconds` before the start, no group: liveness and
  load (so the pool knows every live worker before it recovers leases on them). Each must be
  signed by the key of its worker's accepted verdict (cocoon.core.worker_records); any other is
  refused to `worker.heartbeats.dlq` with the reason (written by the instance owning shard 0, so
  once).
* `billing.ledger` from the same moment, no group (read_committed): each receipt billing refused
  for a reason the worker answers for costs it reputation.
* `inference.responses` from the same moment, no group, reading only each chunk's head: seq 0 of
  the current attempt satisfies its lease.
* `inference.requests`, `billing.reservations` and `inference.outcomes` in the consumer group
  (committed, dead letters): a request the gateway admitted against an admission grant is placed
  at once, any other once its reservation is HELD (a REJECTED one takes a granted request back);
  outcomes free the slot and teach speed/reputation. A worker's outcome counts only when its
  attested key signed it; any other is dead-lettered.

Writes `inference.assignments` and, when it ends a request itself, `inference.outcomes`
(reported_by `scheduler`); every `standings_seconds`, `scheduler.standings` for the workers
whose reputation or speed moved (standings.py). Domain logic is in dispatcher.py; this module
moves records.

Several instances share the consumer group, each owning shards (partition numbers of the three
grouped topics, the range assignor): before any record a change of a request produced, the
request's state goes to `scheduler.leases` (changelog.py), and the instance a shard moves to
rebuilds its waiting requests and leases from there before handling the shard's records
(docs/architecture.md, "Several scheduler instances").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry import context as otel_context
from pydantic import Field, model_validator

from cocoon.core import codec
from cocoon.core.bus import BusConsumer, BusProducer, Message
from cocoon.core.bus.deadletter import dead_letter
from cocoon.core.bus.settings import ConsumerSettings
from cocoon.core.catalog import dead_letter_topic
from cocoon.core.codec import models
from cocoon.core.contracts import Group, Topic
from cocoon.core.crypto.errors import CryptoError
from cocoon.core.registry_entries import WORKER_PREFIX, worker_coefficient
from cocoon.core.runtime import Service
from cocoon.core.runtime.tasks import run_together
from cocoon.core.verdicts import PinnedKeySettings, VerdictError, verify_verdict
from cocoon.core.worker_records import ForgedRecord, verify_record
from cocoon.scheduler import metrics
from cocoon.scheduler.changelog import LEASES, ChangelogReader, owned_record
from cocoon.scheduler.chunks import chunk_head
from cocoon.scheduler.dispatcher import Dispatcher, Phase, Timing
from cocoon.scheduler.feeds import Feed
from cocoon.scheduler.pool import PoolError, WorkerPool
from cocoon.scheduler.standings import StandingsPublisher

log = logging.getLogger(__name__)

VERDICTS = Topic.ATTESTATION_VERDICTS
HEARTBEATS = Topic.WORKER_HEARTBEATS
RESPONSES = Topic.INFERENCE_RESPONSES
LEDGER = Topic.BILLING_LEDGER
REGISTRY = Topic.ATTESTATION_REGISTRY
REQUESTS = Topic.INFERENCE_REQUESTS
RESERVATIONS = Topic.BILLING_RESERVATIONS
OUTCOMES = Topic.INFERENCE_OUTCOMES
ASSIGNMENTS = Topic.INFERENCE_ASSIGNMENTS
STANDINGS = Topic.SCHEDULER_STANDINGS
# Keyed by the logical topic name a record arrives on (physical name less the prefix).
RECORDS: dict[str, str] = {
    VERDICTS: "cocoon.attestation.Verdict",
    REGISTRY: "cocoon.attestation.RegistryEntry",
    HEARTBEATS: "cocoon.worker.Heartbeat",
    LEDGER: "cocoon.billing.LedgerEntry",
}
METRICS_EVERY_S = 1.0
REFUSED_QUEUE = 1000  # dead letters of refused heartbeats waiting to be sent
DEAD_LETTER_SHARD = 0  # its owner dead-letters the refused heartbeats every instance reads


class Settings(PinnedKeySettings):
    """COCOON_LEASE_SECONDS, COCOON_NO_WORKER_WAIT_SECONDS, ... (env names = COCOON_<FIELD>)."""

    lease_seconds: float = Field(10.0, gt=0, description="assignment -> first chunk deadline")
    no_worker_wait_seconds: float = Field(
        5.0, ge=0, description="how long a request waits for a placeable worker"
    )
    busy_wait_seconds: float = Field(
        60.0, ge=0, description="how long a request queues while every worker for it is busy"
    )
    heartbeat_stale_seconds: float = Field(
        6.0, gt=0, description="silence after which a worker is lost (heartbeats every 2 s)"
    )
    max_attempts: int = Field(3, ge=1, description="placements per request before lease_expired")
    tick_seconds: float = Field(0.1, gt=0, le=5, description="lease/liveness check period")
    standings_seconds: float = Field(
        10.0, gt=0, description="how often changed worker standings are published"
    )
    consumer_group: str = Group.SCHEDULER
    group_session_seconds: float = Field(
        10.0,
        ge=6,  # the broker's default group.min.session.timeout.ms
        description="silence after which the group gives a dead instance's shards to others",
    )
    topic_prefix: str = Field("", description="physical topic = prefix + catalog name")

    @model_validator(mode="after")
    def _key_loads(self) -> Settings:
        self.pinned_key()  # VerdictError is a ValueError: reported as a config error
        return self


def admit_verdict(verdict: models.Verdict, pinned_key: bytes, now: float) -> str | None:
    """None when `verdict` may admit its worker to placement, else why not.

    The one place a verdict is judged: signature under the pinned attestation key (which also
    refuses expired TRUSTED verdicts), then the status.
    """
    try:
        checked = verify_verdict(verdict, pinned_key, now)
    except VerdictError as exc:
        return f"{exc.code}: {exc}"
    except (CryptoError, ValueError) as exc:  # fields the canonical encoding refuses
        return f"malformed: {exc}"
    if not checked.trusted:
        return f"status {checked.status}"
    return None


class Scheduler(Service):
    name = "scheduler"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pinned_key = settings.pinned_key()
        self.pool = WorkerPool(heartbeat_ttl=settings.heartbeat_stale_seconds)
        self.dispatcher = Dispatcher(
            self.pool,
            Timing(
                lease_seconds=settings.lease_seconds,
                no_worker_wait_seconds=settings.no_worker_wait_seconds,
                busy_wait_seconds=settings.busy_wait_seconds,
                max_attempts=settings.max_attempts,
            ),
        )
        bootstrap, prefix = settings.kafka_bootstrap, settings.topic_prefix
        client = f"scheduler-{settings.instance_id}"
        self.standings = StandingsPublisher(client)
        self.producer = BusProducer(bootstrap, client_id=client, prefix=prefix)
        self.verdicts = Feed(
            bootstrap,
            [VERDICTS, REGISTRY],
            self._on_verdict,
            start_at="beginning",
            prefix=prefix,
            client_id=f"{client}-verdicts",
        )
        self.live = Feed(
            bootstrap,
            [HEARTBEATS, RESPONSES, LEDGER],
            self._on_live,
            start_at="end",
            # Every live worker's last heartbeat, so leases taken over land on known workers.
            since_ms=int((_now() - settings.heartbeat_stale_seconds) * 1000),
            prefix=prefix,
            client_id=f"{client}-live",
        )
        self.client_id = client
        self.changelog = ChangelogReader(bootstrap, prefix, client_id=f"{client}-changelog")
        self.owned: set[int] = set()  # the shards (partition numbers) this instance owns
        self.requests = BusConsumer(
            bootstrap,
            [REQUESTS, RESERVATIONS, OUTCOMES],
            group_id=settings.consumer_group,
            handler=self._on_request_record,
            client_id=client,
            prefix=prefix,
            shards=self,
            settings=ConsumerSettings(
                session_timeout_ms=int(settings.group_session_seconds * 1000),
                heartbeat_interval_ms=int(settings.group_session_seconds * 1000 / 3),
            ),
        )
        # Every record the scheduler produces about requests, sent in order by one task, so
        # each waits for its ack without blocking a feed, and a request's changelog records
        # (written from the feeds, the tick and the handler) land in the order they were taken.
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        # Dead letters of refused heartbeats, sent by their own task: a forger's flood must not
        # queue up in front of assignments. Bounded: past it, a refusal is only logged.
        self._refused: asyncio.Queue[_Refused] = asyncio.Queue(maxsize=REFUSED_QUEUE)
        self._started: list[Any] = []

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.producer.start()
        self._started.append(self.producer)
        for feed in (self.verdicts, self.live):
            await feed.start()
            self._started.append(feed)
        # Catch up with every verdict before placing anything, so a known model is not
        # reported unknown just because its verdict was not read yet; and with the live
        # workers' last heartbeats, so a lease taken over is on a worker the pool knows.
        await self.verdicts.catch_up(timeout_s=60)
        await self.live.catch_up(timeout_s=60)
        await self.changelog.start()
        self._started.append(self.changelog)
        await self.requests.start()
        self._started.append(self.requests)
        log.info(
            "scheduler ready",
            extra={"workers": len(self.pool.workers()), "models": sorted(self.pool.models(_now()))},
        )

    async def run(self, stopping: asyncio.Event) -> None:
        await run_together(
            verdicts=self.verdicts.run(stopping),
            live=self.live.run(stopping),
            requests=self._consume(stopping),
            tick=self._tick(stopping),
            outbox=self._send_outbox(stopping),
            dead_letters=self._send_dead_letters(stopping),
        )

    async def close(self) -> None:
        for client in reversed(self._started):
            with contextlib.suppress(Exception):
                await client.stop()
        self._started.clear()

    # ---- loops --------------------------------------------------------------------------

    async def _consume(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.requests.poll_once()

    async def _tick(self, stopping: asyncio.Event) -> None:
        observed = published = 0.0
        while not stopping.is_set():
            now = _now()
            self._queue(self.dispatcher.tick(now))
            if now - observed >= METRICS_EVERY_S:
                metrics.observe(self.dispatcher, self.pool, now)
                observed = now
            if now - published >= self.settings.standings_seconds:
                self._queue(self.standings.due(self.pool.workers(), now))
                published = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.settings.tick_seconds)

    async def _send_outbox(self, stopping: asyncio.Event) -> None:
        while not (stopping.is_set() and self._outbox.empty()):
            try:
                record = await asyncio.wait_for(self._outbox.get(), 0.2)
            except TimeoutError:
                continue
            try:
                if isinstance(record, asyncio.Future):  # a caller waits for what precedes it
                    if not record.done():
                        record.set_result(None)
                else:
                    await self._send(record)
            except BaseException as exc:
                self._fail_waiters(exc)
                raise
            finally:
                self._outbox.task_done()

    async def _send_dead_letters(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                refused = await asyncio.wait_for(self._refused.get(), 0.2)
            except TimeoutError:
                continue
            try:
                await self._dead_letter(refused)
            except KafkaError as exc:  # the refusal stands; only its dead letter is lost
                log.warning("dead letter of a refused %s not sent: %s", refused.topic, exc)

    # ---- handlers -----------------------------------------------------------------------

    def _on_verdict(self, topic: str, record: ConsumerRecord) -> None:
        if topic == REGISTRY:
            self._on_registry(record)
            return
        worker_id = record.key.decode("utf-8", "replace") if record.key is not None else None
        if record.value is None:
            if worker_id is not None:
                log.info("verdict tombstone: worker %s removed", worker_id)
                self.dispatcher.on_verdict(worker_id, None, accepted=False)
            return
        verdict = _decode(topic, record)
        if verdict is None:
            return
        why_not = admit_verdict(verdict, self.pinned_key, _now())
        if why_not is not None:
            log.info("worker %s not admitted: %s", verdict.worker_id, why_not)
        self.dispatcher.on_verdict(verdict.worker_id, verdict, accepted=why_not is None)

    def _on_registry(self, record: ConsumerRecord) -> None:
        """`worker:<id>` entries: the coefficient placement, price caps and receipts use."""
        entry_id = record.key.decode("utf-8", "replace") if record.key is not None else ""
        if not entry_id.startswith(WORKER_PREFIX):
            return  # allow-lists and prices are not the scheduler's business
        worker_id = entry_id.removeprefix(WORKER_PREFIX)
        entry = _decode(REGISTRY, record) if record.value is not None else None
        if entry is None or not entry.allowed:
            self.dispatcher.on_registry_coefficient(worker_id, None)
            return
        try:
            coefficient = worker_coefficient(entry.attributes)
        except ValueError as exc:
            log.warning("registry entry %s not applied: %s", entry_id, exc)
            return
        self.dispatcher.on_registry_coefficient(worker_id, coefficient)

    def _on_live(self, topic: str, record: ConsumerRecord) -> None:
        if topic == RESPONSES:
            self._on_chunk(record)
            return
        if topic == LEDGER:
            self._on_ledger(record)
            return
        heartbeat = _decode(topic, record)
        if heartbeat is not None:
            try:
                verify_record(heartbeat, self._signing_key)
            except ForgedRecord as exc:
                self._refuse(topic, record, exc)
                return
            # The worker's send time, but never in our future (its clock may run ahead).
            seen = min(_now(), record.timestamp / 1000)
            try:
                self._queue(self.dispatcher.on_heartbeat(heartbeat, seen))
            except PoolError as exc:  # e.g. a negative capacity: that worker's problem, not ours
                log.warning("ignoring heartbeat of %s: %s", heartbeat.worker_id, exc)

    def _on_ledger(self, record: ConsumerRecord) -> None:
        """A receipt billing refused counts against its worker's reputation, unless anyone
        could have sent it (bad signature) or it was only late (a superseded attempt)."""
        entry = _decode(LEDGER, record)
        if entry is None or not entry.cause_id.startswith("reject:"):
            return
        try:
            meta = json.loads(entry.memo)["entry"]["meta"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable rejection memo %s: %s", entry.cause_id, exc)
            return
        if meta.get("attributable") and isinstance(meta.get("worker_id"), str):
            self.dispatcher.on_receipt_rejected(meta["worker_id"], _now())
            metrics.RECEIPTS_REJECTED.labels(meta.get("reason", "")).inc()

    def _on_chunk(self, record: ConsumerRecord) -> None:
        if record.value is None:
            return
        try:
            head = chunk_head(record.value)
        except codec.DecodeError as exc:
            log.warning("unreadable chunk at %s/%d: %s", record.partition, record.offset, exc)
            return
        if head.seq == 0 and self.dispatcher.on_first_chunk(
            head.request_id, head.attempt, head.seq
        ):
            metrics.FIRST_CHUNKS.inc()

    async def _on_request_record(self, message: Message) -> None:
        now = _now()
        if message.topic in (REQUESTS, RESERVATIONS):
            if message.topic == REQUESTS:
                emitted = self.dispatcher.on_request(message.value, now, message.partition)
            else:
                emitted = self.dispatcher.on_reservation(message.value, now, message.partition)
            request = self.dispatcher.requests.get(message.value.request_id)
            if request is not None and request.trace is None:
                request.trace = otel_context.get_current()  # later re-placements join it
        else:
            try:
                verify_record(message.value, self._signing_key)
            except ForgedRecord as exc:
                metrics.FORGED.labels(message.topic, exc.code).inc()
                raise  # dead-lettered by the consumer, with the reason
            emitted = self.dispatcher.on_outcome(message.value, now)
        # Sent before the offset is committed, the changelog first: a placement is never lost,
        # and the instance that takes the shard over knows it (its lease, not a second one).
        await self._queue_and_wait(emitted)

    def _signing_key(self, worker_id: str) -> bytes | None:
        return self.dispatcher.signing_key(worker_id, _now())

    def _refuse(self, topic: str, record: ConsumerRecord, exc: ForgedRecord) -> None:
        """A worker record nothing vouches for: dead-lettered with the reason, nothing changed.

        Every instance reads the heartbeats without a group; the one owning shard 0 writes
        their dead letters, so each is written once (a gateway, which reads them too, only
        drops them)."""
        log.warning("refused %s at %d/%d: %s", topic, *_at(record), exc)
        metrics.FORGED.labels(topic, exc.code).inc()
        if DEAD_LETTER_SHARD in self.owned:
            with contextlib.suppress(asyncio.QueueFull):
                self._refused.put_nowait(_Refused(topic, record, exc))

    # ---- shards -------------------------------------------------------------------------

    async def revoked(self, partitions: set[int]) -> None:
        """The group takes shards away (called with no record in hand). Their requests are
        forgotten at once, so the tick places none of them any more, and this returns once
        every changelog record queued for them is written: the next owner reads them all."""
        self._queue([])  # the changes not queued yet, written as they are now
        dropped = self.dispatcher.drop_shards(partitions & self.owned, _now())
        self.owned -= partitions
        await self._outbox.join()
        log.info("shards revoked", extra={"shards": sorted(partitions), "requests": dropped})

    async def assigned(self, partitions: set[int]) -> None:
        """Shards given to this instance: their waiting requests and leases come back from the
        changelog before any of their records is handled."""
        gained = partitions - self.owned
        found = await self.changelog.read(gained)
        now = _now()
        emitted: list[Any] = []
        for item in found.requests:
            emitted += self.dispatcher.recover(item.request, item.lease, now)
        self.owned |= gained
        await self._queue_and_wait(emitted)
        metrics.RECOVERY_SECONDS.observe(found.seconds)
        log.info(
            "shards assigned",
            extra={
                "shards": sorted(partitions),
                "recovered": len(found.requests),
                "changelog_records": found.records,
                "recovery_ms": round(found.seconds * 1000, 1),
            },
        )

    # ---- sending ------------------------------------------------------------------------

    def _queue(self, records: list[Any]) -> None:
        for record in self._with_changes(records):
            self._outbox.put_nowait(record)

    async def _queue_and_wait(self, records: list[Any]) -> None:
        """Queue `records` (behind the changelog writes due) and return once they are sent."""
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue(records)
        self._outbox.put_nowait(sent)
        await sent

    def _fail_waiters(self, exc: BaseException) -> None:
        """The sender stops: whoever waits for a record behind the failed one fails too."""
        while not self._outbox.empty():
            item = self._outbox.get_nowait()
            self._outbox.task_done()
            if isinstance(item, asyncio.Future) and not item.done():
                item.set_exception(exc if isinstance(exc, Exception) else KafkaError(str(exc)))

    def _with_changes(self, records: list[Any]) -> list[Any]:
        """`records` behind the changelog writes of the requests whose state changed, each
        taken now (a lease may be gone by the time it is sent)."""
        now = _now()
        owned = []
        for request in self.dispatcher.take_changes():
            value = None
            if request.phase is not Phase.DONE:
                lease = self.pool.lease(request.request_id)
                value = owned_record(request, lease, self.client_id, now)
            owned.append(_Owned(request.request_id, request.shard, value))
        return owned + records

    async def _send(
        self, record: models.Assignment | models.Outcome | models.WorkerStanding | _Owned
    ) -> None:
        if isinstance(record, _Owned):
            await self._log(record)
            return
        if isinstance(record, models.WorkerStanding):  # about a worker, not a request
            await self.producer.send(STANDINGS, record)
            return
        request = self.dispatcher.requests.get(record.request_id)
        token = None
        if request is not None and isinstance(request.trace, otel_context.Context):
            token = otel_context.attach(request.trace)
        try:
            if isinstance(record, models.Assignment):
                await self.producer.send(ASSIGNMENTS, record)
                metrics.ASSIGNMENTS.labels("first" if record.attempt == 1 else "retry").inc()
            else:
                await self.producer.send(OUTCOMES, record)
                metrics.ENDED.labels(record.error_code or record.status).inc()
        finally:
            if token is not None:
                otel_context.detach(token)

    async def _log(self, owned: _Owned) -> None:
        """A changelog record on its shard's partition (a tombstone once the request ended)."""
        if owned.value is None:
            key = owned.request_id.encode()
            await self.producer.send_raw(LEASES, None, key=key, partition=owned.shard)
            return
        await self.producer.send(LEASES, owned.value, partition=owned.shard)

    async def _dead_letter(self, refused: _Refused) -> None:
        value, headers = dead_letter(refused.record, refused.error, topic=refused.topic, group=None)
        await self.producer.send_raw(
            dead_letter_topic(refused.topic), value, key=refused.record.key, headers=headers
        )


@dataclass(frozen=True)
class _Owned:
    """A request's changelog record, due before the records its change produced."""

    request_id: str
    shard: int
    value: models.OwnedRequest | None  # None: it ended (a tombstone)


@dataclass(frozen=True)
class _Refused:
    """A record read without a group that goes to its dead-letter topic (sent in order)."""

    topic: str
    record: ConsumerRecord
    error: ForgedRecord


def _now() -> float:
    return time.time()


def _decode(topic: str, record: ConsumerRecord) -> Any:
    """The record's model, or None (logged) when it cannot be read: skipped, not fatal."""
    try:
        return codec.decode_model(record.value, reader=RECORDS[topic])
    except (codec.DecodeError, ValueError) as exc:
        log.warning("skipping unreadable %s record at %d/%d: %s", topic, *_at(record), exc)
        return None


def _at(record: ConsumerRecord) -> tuple[int, int]:
    return record.partition, record.offset


def build(settings: Settings) -> Scheduler:
    return Scheduler(settings)


__all__ = ["Scheduler", "Settings", "admit_verdict", "build"]
