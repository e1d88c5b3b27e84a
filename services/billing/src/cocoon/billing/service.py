"""Billing's Kafka wiring: `cocoon run billing` (docs/architecture.md, steps 2 and 9).

Start:
1. the transactional producer initialises, which fences any older instance with the same
   `transactional_id` and aborts its open transaction;
2. the state is restored from the newest committed snapshot (`billing.snapshots`, written in the
   transaction of the entries it includes) plus the `billing.ledger` entries after it
   (read_committed), or with no snapshot from the whole ledger, so holds, captures, rejections
   and balances are exactly what was committed, and start-up does not replay history;
3. dev grants (`COCOON_DEV_GRANTS`) are applied once ever (deterministic entry ids);
4. `attestation.verdicts` and `attestation.registry` are mirrored from the beginning (every
   verdict checked against the pinned attestation key; prices, worker coefficients and payout
   addresses from the registry) before any record is read;
5. the consumer group resumes `inference.requests`, `usage.receipts`, `inference.outcomes` and
   `inference.assignments` from its committed offsets. Which attempt of a request is current
   lives in memory, so before that the placements of the open holds are re-read (from the oldest
   open hold to the end): a late receipt of a superseded attempt is refused even right after a
   restart. An outcome a worker reports counts only when the key of its current verdict signed
   it (cocoon.core.worker_records); any other is dead-lettered and releases nothing.

Then, per polled batch, ONE Kafka transaction holds the new ledger entries (`billing.ledger`)
and the workers' side of them (`billing.earnings`), the balances they changed
(`billing.balances`), every `snapshot_every_entries` entries a snapshot of the state
(`billing.snapshots`), the reservations (`billing.reservations`), the admission grants given,
refused or closed (`billing.grants`), dead letters, and the batch's input offsets
(`send_offsets_to_transaction`). A receipt for a request not read yet stops its partition there
(not committed) until the requests are read past it: a request admitted against a grant is
placed before billing reads it (docs/architecture.md, "Admission grants"). A crash at any point
leaves either all of it or none: no charge without its offset, no offset without its charge.
Timers (holds past deadline + grace, outcomes whose receipt never came) run in the same loop and
the same transactions.

Runs as ONE active instance: the engine holds every account in memory and receipts are keyed
by request, not account, so partitions cannot be split between instances. A second instance with
the same transactional id takes over and fences the first (which then fails and exits).
aiokafka has no KIP-447 group-metadata fencing, so distinct transactional ids must not share the
consumer group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry import context as otel_context
from prometheus_client import Counter
from pydantic import Field, ValidationError, model_validator

from cocoon.billing.money import BillingError, check_amount, check_id
from cocoon.billing.pricing import BPS_ONE, Prices
from cocoon.billing.receipts import (
    Ed25519ReceiptVerifier,
    Receipt,
    canonical_message,
)
from cocoon.billing.stream import (
    BALANCES_TOPIC,
    EARNING_RECORD,
    EARNINGS_TOPIC,
    LEDGER_TOPIC,
    earning_records,
    ledger_records,
    touched,
)
from cocoon.billing.stream_handlers import (
    BadRecord,
    Batch,
    GrantPolicy,
    Processor,
    ReceiptTooEarly,
    receipt_of,
)
from cocoon.billing.stream_registry import REGISTRY_TOPIC, RegistryPrices
from cocoon.billing.stream_replay import LEDGER_RECORD, read_ledger_from
from cocoon.billing.stream_snapshot import (
    SNAPSHOT_RECORD,
    SNAPSHOTS_TOPIC,
    read_snapshot,
    snapshot_records,
)
from cocoon.billing.stream_ton import TonLink
from cocoon.billing.stream_verdicts import VERDICTS_TOPIC, VerdictKeys
from cocoon.billing.ton.config import TonSettings
from cocoon.core import codec
from cocoon.core.bus import BusProducer
from cocoon.core.bus.broadcast import BroadcastReader, BroadcastRecord
from cocoon.core.bus.deadletter import InvalidValue, MissingValue, RejectRecord, dead_letter
from cocoon.core.bus.security import aiokafka_security
from cocoon.core.bus.settings import ConsumerSettings
from cocoon.core.catalog import dead_letter_topic, default_catalog
from cocoon.core.codec import models
from cocoon.core.codec.base import AvroModel
from cocoon.core.codec.timestamps import now_millis
from cocoon.core.contracts import Group, Topic
from cocoon.core.paths import cache_dir
from cocoon.core.request_ids import account_partitions
from cocoon.core.runtime import Service
from cocoon.core.runtime.metrics import MESSAGES
from cocoon.core.runtime.tasks import run_together
from cocoon.core.telemetry.messaging import consume_span, mark_failed
from cocoon.core.verdicts import PinnedKeySettings
from cocoon.core.worker_records import verify_record

log = logging.getLogger(__name__)

REQUESTS = Topic.INFERENCE_REQUESTS
RECEIPTS = Topic.USAGE_RECEIPTS
OUTCOMES = Topic.INFERENCE_OUTCOMES
ASSIGNMENTS = Topic.INFERENCE_ASSIGNMENTS
RESERVATIONS = Topic.BILLING_RESERVATIONS
GRANTS = Topic.BILLING_GRANTS
TOPUPS = Topic.BILLING_TOPUPS
REFUNDS = Topic.BILLING_REFUNDS
GRANT_RECORD = "cocoon.billing.Grant"
REFUND_RECORD = "cocoon.billing.Refund"
# Keyed by the logical topic name a record arrives on (physical name less the prefix).
INPUTS: dict[str, str] = {  # in the order a polled batch is handled
    REQUESTS: "cocoon.inference.InferenceRequest",
    ASSIGNMENTS: "cocoon.inference.Assignment",
    RECEIPTS: "cocoon.inference.UsageReceipt",
    OUTCOMES: "cocoon.inference.Outcome",
    TOPUPS: "cocoon.billing.TopUp",
}
BALANCE_RECORD = "cocoon.billing.Balance"

RESERVATIONS_TOTAL = Counter(
    "cocoon_billing_reservations", "Admission decisions", ["status", "reason"]
)
RECEIPTS_TOTAL = Counter("cocoon_billing_receipts", "Receipts by result", ["result", "reason"])
RELEASES_TOTAL = Counter("cocoon_billing_releases", "Holds released without a charge")
TRANSACTIONS_TOTAL = Counter("cocoon_billing_transactions", "Committed Kafka transactions")


def parse_grants(text: str) -> dict[str, int]:
    """`"demo=1000000000000,alice=5"` -> {"demo": 10**12, "alice": 5} (nanoTON)."""
    grants: dict[str, int] = {}
    for part in text.replace(";", ",").split(","):
        if not part.strip():
            continue
        account, sep, amount = part.partition("=")
        if not sep:
            raise ValueError(f"dev grant {part.strip()!r} is not ACCOUNT=NANOTON")
        account = check_id(account.strip(), "dev grant account")
        try:
            value = int(amount.strip())
        except ValueError:
            raise ValueError(f"dev grant amount {amount.strip()!r} is not an integer") from None
        grants[account] = check_amount(value, f"dev grant for {account}")
    return grants


class Settings(PinnedKeySettings):
    """COCOON_<FIELD> each (e.g. COCOON_DEV_GRANTS, COCOON_ATTESTATION_PUBLIC_KEY)."""

    # Prices until the registry holds a price list (`cocoon registry set-prices`): integer
    # nanoTON per adjusted token. Development networks may rely on these alone.
    price_per_token_nanoton: int = Field(100, gt=0)
    worker_fee_per_token_nanoton: int = Field(80, ge=0)
    prompt_bps: int = Field(BPS_ONE, ge=0)
    cached_bps: int = Field(BPS_ONE, ge=0)
    completion_bps: int = Field(BPS_ONE, ge=0)
    reasoning_bps: int = Field(BPS_ONE, ge=0)
    # Development funding only: ACCOUNT=NANOTON[,ACCOUNT=NANOTON...], credited once ever per
    # account. Production funds come only from TON deposits.
    dev_grants: str = ""
    hold_grace_seconds: float = Field(30.0, ge=0, description="hold lives past the deadline")
    outcome_grace_seconds: float = Field(5.0, ge=0, description="wait for a late receipt")
    tick_seconds: float = Field(0.5, gt=0, le=10, description="timer period (expiry)")
    # Admission grants (docs/billing-service.md): how long a gateway may admit against one, the
    # share of an account's remaining balance one may take, and how far behind billing's the
    # gateways' and workers' clocks may be.
    grant_usable_seconds: float = Field(30.0, gt=0)
    grant_max_share_bps: int = Field(5_000, gt=0, le=BPS_ONE)
    clock_skew_seconds: float = Field(2.0, ge=0)
    # How far back placements are re-read at start, besides those of the open holds: a granted
    # request is placed before billing reads it, so its placement may precede its hold.
    assignment_lookback_seconds: float = Field(900.0, ge=0)
    # Records per poll and per transaction: each transaction pays fixed round trips and a marker
    # per partition it wrote, so larger batches commit more per second (500: 1,578/s, 2,000:
    # 1,875/s, 5,000: 1,905/s in bench/billing_kafka.py); under light load batches are small.
    max_batch_records: int = Field(2000, gt=0, description="records per transaction")
    # Threads that verify a batch's receipt signatures ahead of its in-order capture (Ed25519
    # verify releases the GIL and is most of a capture's cost); 1 verifies inline.
    verify_threads: int = Field(default_factory=lambda: min(4, os.cpu_count() or 1), ge=1, le=64)
    # TON (deposits and payouts) is on when COCOON_TON_NETWORK is set; see billing/ton/config.py.
    ton_poll_seconds: float = Field(5.0, gt=0, description="deposit and payout step period")
    payout_store: Path | None = Field(None, description="SQLite file of payouts in flight")
    # A snapshot of the state goes out with the transaction once this many entries were
    # recorded since the last one (0: never; a start then replays the whole ledger).
    snapshot_every_entries: int = Field(20_000, ge=0)
    # Settled requests and rejected receipts are remembered this long (past the hold's expiry
    # and the receipt's end), then forgotten; older requests and receipts are not acted on.
    idempotence_window_seconds: float = Field(86_400.0, gt=0)
    consumer_group: str = Group.BILLING
    transactional_id: str = Field("billing", description="one active billing per id")
    topic_prefix: str = Field("", description="physical topic = prefix + catalog name")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        self.pinned_key()
        self.prices()
        self.grants()
        return self

    def prices(self) -> Prices:
        return Prices(
            price_per_token=self.price_per_token_nanoton,
            worker_fee_per_token=self.worker_fee_per_token_nanoton,
            prompt_bps=self.prompt_bps,
            cached_bps=self.cached_bps,
            completion_bps=self.completion_bps,
            reasoning_bps=self.reasoning_bps,
        )

    def grants(self) -> dict[str, int]:
        return parse_grants(self.dev_grants)

    def ton(self) -> TonSettings | None:
        return TonSettings.from_env() if os.environ.get("COCOON_TON_NETWORK") else None

    def payout_store_path(self) -> Path:
        default = cache_dir() / "billing" / f"payouts-{self.transactional_id}.sqlite"
        return self.payout_store or default


class Billing(Service):
    name = "billing"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        bootstrap, prefix = settings.kafka_bootstrap, settings.topic_prefix
        self.prefix = prefix
        client = f"billing-{settings.instance_id}"
        self.keys = VerdictKeys(settings.pinned_key())
        self.verify = Ed25519ReceiptVerifier(
            self.keys.current_key, canonical_message, threads=settings.verify_threads
        )
        self.producer = BusProducer(
            bootstrap, client_id=client, prefix=prefix, transactional_id=settings.transactional_id
        )
        self.registry = RegistryPrices(settings.prices())
        self.mirrors = BroadcastReader(
            bootstrap,
            [VERDICTS_TOPIC, REGISTRY_TOPIC],
            self._on_mirrored,
            from_beginning=True,
            prefix=prefix,
            client_id=f"{client}-verdicts",
        )
        consumer_settings = ConsumerSettings(max_poll_records=settings.max_batch_records)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=settings.consumer_group,
            client_id=client,
            **consumer_settings.kwargs(),
            **aiokafka_security(),
        )
        self._fence_check = _FenceCheck()
        self.consumer.subscribe([prefix + topic for topic in INPUTS], listener=self._fence_check)
        self.processor: Processor | None = None
        self.ton: TonLink | None = None
        # One transaction at a time: the consume loop's and the TON side's pre-signing commit.
        self._committing = asyncio.Lock()
        self._order = {prefix + topic: rank for rank, topic in enumerate(INPUTS)}
        # Request id -> the context of its consume span, until its reservation is sent.
        self._request_traces: dict[str, otel_context.Context] = {}
        # Per usage.receipts and inference.requests partition: the timestamp of the last record
        # handled (hold expiry, grant closing, receipts that came before their request).
        self._read_ms: dict[TopicPartition, int] = {}
        # usage.receipts partitions stopped at a receipt that came before its request.
        self._parked: set[TopicPartition] = set()
        self._store = codec.default_store()
        self._catalog = default_catalog()
        self._started: list[Any] = []
        # billing.ledger partition -> offset after the last committed record we know of: where
        # the tail of a snapshot taken now starts.
        self._ledger_ends: dict[int, int] = {}
        self._snapshot_seq = 0  # ledger length at the last snapshot (read or written)
        # (entries restored from the snapshot, entries replayed after it), once started.
        self.restored: tuple[int, int] = (0, 0)

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        await self.producer.start()  # init_transactions: fences and aborts an older instance
        self._started.append(self.producer)
        snapshot = None
        if s.snapshot_every_entries:
            snapshot = await read_snapshot(
                s.kafka_bootstrap, s.transactional_id, prefix=self.prefix
            )
        tail = await read_ledger_from(
            s.kafka_bootstrap,
            prefix=self.prefix,
            from_offsets=snapshot.ledger_offsets if snapshot else None,
            from_seq=snapshot.seq if snapshot else 0,
        )
        self._ledger_ends = dict(tail.ends)
        self._snapshot_seq = snapshot.seq if snapshot else 0
        self.restored = (self._snapshot_seq, len(tail.entries))
        self.processor = Processor(
            self.registry.prices,
            self.verify,
            tail.entries,
            snapshot=snapshot.state if snapshot else None,
            window_ms=int(s.idempotence_window_seconds * 1000),
            hold_grace_ms=int(s.hold_grace_seconds * 1000),
            outcome_grace_ms=int(s.outcome_grace_seconds * 1000),
            grants=GrantPolicy(
                usable_ms=int(s.grant_usable_seconds * 1000),
                max_share_bps=s.grant_max_share_bps,
                clock_skew_ms=int(s.clock_skew_seconds * 1000),
            ),
            attested_address=self.keys.payout_address,
            partitions=account_partitions(),
        )
        await self._apply_grants()
        await self._reread_assignments()
        await self.mirrors.start()
        self._started.append(self.mirrors)
        # Every verdict and registry entry that exists now is read before any record is judged.
        await self.mirrors.catch_up(timeout_s=60)
        ton = s.ton()
        if ton is not None:  # after the registry is read: payouts go to its addresses
            self.ton = TonLink(
                ton,
                self.processor.engine,
                self.registry.payout_address,
                self.registry.banned,
                s.payout_store_path(),
                commit=self._commit_pending,
            )
            self._started.append(self.ton)
        await self.consumer.start()
        self._started.append(self.consumer)
        engine = self.processor.engine
        log.info(
            "billing ready",
            extra={
                "ledger_entries": len(engine.ledger),
                "snapshot_entries": snapshot.seq if snapshot else 0,
                "replayed_entries": len(tail.entries),
                "open_holds": len(engine.open_holds()),
                "trusted_workers": len(self.keys),
            },
        )

    async def _reread_assignments(self) -> None:
        assert self.processor is not None
        processor = self.processor
        engine = processor.engine
        now = now_millis()
        lookback = now - int(self.settings.assignment_lookback_seconds * 1000)
        since = min([h.requested_at_ms for h in engine.open_holds()] + [lookback])

        def on_record(record: BroadcastRecord) -> None:
            if record.value is not None and record.record == INPUTS[ASSIGNMENTS]:
                processor.on_assignment(models.Assignment.from_avro(record.value), now)

        reader = BroadcastReader(
            self.settings.kafka_bootstrap,
            [ASSIGNMENTS],
            on_record,
            from_beginning=False,
            since_ms=since,
            prefix=self.prefix,
            client_id=f"billing-{self.settings.instance_id}-assignments",
        )
        await reader.start()
        try:
            await reader.catch_up(timeout_s=60)
        finally:
            await reader.stop()

    async def run(self, stopping: asyncio.Event) -> None:
        loops = {"mirrors": self.mirrors.run(stopping), "consume": self._consume(stopping)}
        if self.ton is not None:
            loops["ton"] = self.ton.run(stopping, self.settings.ton_poll_seconds)
        await run_together(**loops)

    def _on_mirrored(self, record: BroadcastRecord) -> None:
        if record.topic == REGISTRY_TOPIC:
            if self.registry.on_record(record) and self.processor is not None:
                # New holds are priced at this; open holds keep the prices they were taken at.
                self.processor.engine.prices = self.registry.prices
        else:
            self.keys.on_record(record)

    async def close(self) -> None:
        for client in reversed(self._started):
            with contextlib.suppress(Exception):
                await (client.close() if isinstance(client, TonLink) else client.stop())
        self._started.clear()
        self.verify.close()

    # ---- the transactional loop --------------------------------------------------------

    async def _apply_grants(self) -> None:
        assert self.processor is not None
        now = now_millis()
        for account, amount in self.settings.grants().items():
            if self.processor.grant(account, amount, now):
                log.info("dev grant of %d nanoTON to %s", amount, account)
        batch = self.processor.take()
        if batch:
            await self._transaction(batch, {}, [], now)

    async def _consume(self, stopping: asyncio.Event) -> None:
        last_tick = 0.0
        while not stopping.is_set():
            polled = await self.consumer.getmany(
                timeout_ms=100, max_records=self.settings.max_batch_records
            )
            tick = time.monotonic() - last_tick >= self.settings.tick_seconds
            if not any(polled.values()) and not tick:
                continue
            if tick:
                last_tick = time.monotonic()
                if self._parked:  # look at the receipts that came too early again
                    self.consumer.resume(*self._parked)
                    self._parked.clear()
            if self._fence_check.pending:
                tick = True  # commit at once: see _positions_after_rebalance
            async with self._committing:  # records, their entries and offsets: one unit
                await self._process(polled, tick)

    async def _process(
        self, polled: dict[TopicPartition, list[ConsumerRecord]], tick: bool
    ) -> None:
        assert self.processor is not None
        now = now_millis()
        # A partition with records in this batch commits past the ones handled, below.
        offsets = {
            tp: position
            for tp, position in (await self._positions_after_rebalance()).items()
            if not polled.get(tp)
        }
        dead: list[tuple[str, ConsumerRecord, Exception]] = []
        parked: dict[TopicPartition, int] = {}
        receipts = self._check_receipts_ahead(polled)
        # Within a batch, requests and placements before the receipts and outcomes they decide.
        for tp, records in sorted(polled.items(), key=lambda item: self._order[item[0].topic]):
            for record in records:
                topic = record.topic.removeprefix(self.prefix)
                with consume_span(record, group=self.settings.consumer_group) as span:
                    try:
                        self._handle(topic, record, now, receipts.pop(id(record), None))
                    except ReceiptTooEarly:
                        # Stop this partition here: its offset stays on this receipt, which is
                        # read again after the next tick has read further into the requests.
                        parked[tp] = record.offset
                        break
                    except (
                        codec.DecodeError,
                        BadRecord,
                        InvalidValue,
                        MissingValue,
                        RejectRecord,
                    ) as exc:
                        mark_failed(span, exc)
                        dead.append((topic, record, exc))
                        MESSAGES.labels("billing", topic, "dead_letter").inc()
                    except Exception as exc:
                        # A bug met on this record, not a fault of it. Failing would meet it
                        # again after every restart, so the consumer goes on and the record is
                        # kept with the error for a person. Entries recorded for it before the
                        # error are checked ledger entries and commit with the batch as usual.
                        log.exception(
                            "internal error on %s/%d/%d: dead-lettered",
                            topic,
                            record.partition,
                            record.offset,
                        )
                        mark_failed(span, exc)
                        dead.append((topic, record, exc))
                        MESSAGES.labels("billing", topic, "error").inc()
                    else:
                        MESSAGES.labels("billing", topic, "ok").inc()
                offsets[tp] = record.offset + 1
                self._read_ms[tp] = record.timestamp
        for tp, offset in parked.items():
            # Before the tick asks how far each partition is read: the fetch position is past
            # the parked receipt (and whatever followed it in the batch), none of them read.
            self.consumer.seek(tp, offset)
            self.consumer.pause(tp)
            self._parked.add(tp)
        if tick:
            read_to = await self._read_to(RECEIPTS, now)
            requests_read_to = await self._read_to(REQUESTS, now)
            released = self.processor.tick(now, read_to, requests_read_to)
            RELEASES_TOTAL.inc(len(released))
            if released:
                log.info(
                    "released %d hold(s) without a charge",
                    len(released),
                    extra={"receipts_read_to_ms": read_to, "request_ids": released[:20]},
                )
        batch = self.processor.take()
        if batch or offsets or dead:
            await self._transaction(batch, offsets, dead, now)
        self._request_traces.clear()  # a request that made no reservation (a replay) left one

    async def _positions_after_rebalance(self) -> dict[TopicPartition, int]:
        """After a rebalance, the positions of the partitions now ours, to commit at once.

        Another instance with our transactional id fences us when it starts, and a rebalance
        is when one appears. Committing these offsets in a transaction asks the transaction
        coordinator, so a fenced instance fails here and exits even when no record comes its
        way; committing a position changes nothing else."""
        if not self._fence_check.pending:
            return {}
        self._fence_check.pending = False
        positions: dict[TopicPartition, int] = {}
        for tp in self.consumer.assignment():
            try:
                positions[tp] = await self.consumer.position(tp)
            except IllegalStateError:  # revoked again meanwhile: the next assignment asks again
                return {}
        return positions

    async def _commit_pending(self) -> None:
        """Commit what the engine holds beyond the last transaction (the TON side calls this
        before signing a payout). Raises when the transaction fails, e.g. fenced."""
        assert self.processor is not None
        async with self._committing:
            batch = self.processor.take()
            if batch:
                await self._transaction(batch, {}, [], now_millis())

    async def _read_to(self, name: str, now: int) -> int | None:
        """How far in time every partition of input topic `name` has been read: `now` for a
        partition read to its end, else the timestamp of its last record handled; None while
        any is unknown (no fetch answered yet, nothing read yet, or not every partition ours)."""
        topic = self.prefix + name
        partitions = [tp for tp in self.consumer.assignment() if tp.topic == topic]
        if not partitions or len(partitions) != len(
            self.consumer.partitions_for_topic(topic) or ()
        ):
            # Not every partition is ours (mid-rebalance, e.g. a killed instance not yet evicted
            # from the group): a record may wait in one we cannot see, so nothing expires.
            return None
        # Ask the broker (ListOffsets, read_committed: the stable end) rather than trust the
        # end cached from the last fetch: a receipt appended since then would be taken as read,
        # and its hold expired under it.
        try:
            ends = await self.consumer.end_offsets(partitions)
        except KafkaError as exc:
            log.info("%s end offsets unknown (%s): nothing expires this tick", name, exc)
            return None
        read_to = now
        for tp in partitions:
            end = ends.get(tp)
            try:
                position = await self.consumer.position(tp)
            except IllegalStateError:  # revoked meanwhile (a rebalance): ask again next tick
                return None
            if end is not None and position >= end and tp not in self._parked:
                continue  # read to the end
            seen = self._read_ms.get(tp)
            if seen is None:
                return None
            read_to = min(read_to, seen)
        return read_to

    def _check_receipts_ahead(
        self, polled: dict[TopicPartition, list[ConsumerRecord]]
    ) -> dict[int, Receipt]:
        """Build the batch's receipts and verify their signatures on several threads; the
        receipts by record (`id`), for `_handle`. A record that does not decode or is not a
        valid receipt is left for `_handle`, which dead-letters it in order."""
        topic = self.prefix + RECEIPTS
        receipts: dict[int, Receipt] = {}
        for tp, records in polled.items():
            if tp.topic != topic:
                continue
            for record in records:
                if record.value is None:
                    continue
                try:
                    _, data = self._store.decode(record.value, reader=INPUTS[RECEIPTS])
                    receipts[id(record)] = receipt_of(data)
                except (codec.DecodeError, BadRecord):
                    continue
        self.verify.check_ahead(list(receipts.values()))
        return receipts

    def _handle(
        self, topic: str, record: ConsumerRecord, now: int, receipt: Receipt | None = None
    ) -> None:
        assert self.processor is not None
        if record.value is None:
            raise MissingValue(f"null value on {topic}")
        if topic == RECEIPTS:
            # No model: `receipt_from_record` validates every field it uses, and this is the
            # hot path (docs/performance.md). Not built ahead: this raises why (dead-lettered).
            if receipt is None:
                _, data = self._store.decode(record.value, reader=INPUTS[RECEIPTS])
                receipt = receipt_of(data)
            self._on_receipt(receipt, record.timestamp, now)
            return
        # Read as the topic's record (INPUTS), so each topic has exactly one model.
        _, data = self._store.decode(record.value, reader=INPUTS[topic])
        if topic == REQUESTS:
            request = _validated(models.InferenceRequest, data)
            # A granted request may have been served already: its hold is carved regardless.
            if request.grant_id is None and request.deadline_at.timestamp() * 1000 < now:
                log.info("request %s arrived past its deadline: ignored", request.request_id)
                return
            self.processor.on_request(request, now)
            self._request_traces[request.request_id] = otel_context.get_current()
        elif topic == ASSIGNMENTS:
            self.processor.on_assignment(_validated(models.Assignment, data), now)
        elif topic == TOPUPS:
            topup = _validated(models.TopUp, data)
            try:
                self.processor.on_topup(topup, now)
            except BillingError as exc:
                raise BadRecord(str(exc)) from None
        else:
            outcome = _validated(models.Outcome, data)
            # Only its worker may end an attempt: a forged outcome would release the hold.
            verify_record(outcome, self.keys.current_key)
            self.processor.on_outcome(outcome, now)

    def _on_receipt(self, receipt: Receipt, sent_at_ms: int, now: int) -> None:
        assert self.processor is not None
        try:
            result = self.processor.on_receipt(receipt, now, sent_at_ms=sent_at_ms)
        except BillingError as exc:
            raise BadRecord(str(exc)) from None
        reason = result.reason.value if result.reason else ""
        RECEIPTS_TOTAL.labels(result.status, reason).inc()
        if result.status == "rejected":
            log.warning(
                "receipt for %s from %s rejected: %s (%s)",
                receipt.request_id,
                receipt.worker_id,
                reason,
                result.detail,
            )

    async def _transaction(
        self,
        batch: Batch,
        offsets: dict[TopicPartition, int],
        dead: list[tuple[str, ConsumerRecord, Exception]],
        now: int,
    ) -> None:
        """Publish `batch` and commit `offsets` atomically (or neither, and fail)."""
        assert self.processor is not None
        kafka = self.producer.kafka
        # Taken before the first await: the TON side may record entries meanwhile, which
        # belong to the next transaction, not to this snapshot.
        snapshot = self._snapshot_due(now)
        await kafka.begin_transaction()
        try:
            sends: list[asyncio.Future] = []
            ledger_sends: list[asyncio.Future] = []
            owners: set[str] = set()
            for seq, entry in batch.entries:
                owners |= touched(entry)
                records = ledger_records(entry, seq)
                for record in records:
                    ledger_sends.append(await self._send(LEDGER_TOPIC, record, LEDGER_RECORD))
                for earning in earning_records(entry, records):
                    sends.append(await self._send(EARNINGS_TOPIC, earning, EARNING_RECORD))
            for record in snapshot:
                sends.append(await self._send(SNAPSHOTS_TOPIC, record, SNAPSHOT_RECORD))
            engine = self.processor.engine
            for owner in sorted(owners):
                balance = self.processor.book.record(engine.ledger, owner, now)
                sends.append(await self._send(BALANCES_TOPIC, balance, BALANCE_RECORD))
            for reservation in batch.reservations:
                # In the request's trace: the scheduler and the gateway continue it from here.
                trace = self._request_traces.pop(reservation["request_id"], None)
                token = otel_context.attach(trace) if trace is not None else None
                try:
                    sends.append(await self._send(RESERVATIONS, reservation, None, traced=True))
                finally:
                    if token is not None:
                        otel_context.detach(token)
                RESERVATIONS_TOTAL.labels(
                    reservation["status"], reservation["reject_reason"] or ""
                ).inc()
            for grant in batch.grants:
                sends.append(await self._send(GRANTS, grant, GRANT_RECORD))
            for refund in batch.refunds:
                sends.append(await self._send(REFUNDS, refund, REFUND_RECORD))
            for topic, record, exc in dead:
                sends.append(await self._dead_letter(topic, record, exc))
            if offsets:
                await kafka.send_offsets_to_transaction(offsets, self.settings.consumer_group)
            written = await asyncio.gather(*ledger_sends)
            await asyncio.gather(*sends)
            await kafka.commit_transaction()
        except BaseException:
            # The engine already applied what this transaction would have made durable, so its
            # memory is ahead of Kafka: never carry on from it. Abort; the service fails, and a
            # restart replays the ledger.
            with contextlib.suppress(Exception):
                await kafka.abort_transaction()
            raise
        TRANSACTIONS_TOTAL.inc()
        for metadata in written:
            after = metadata.offset + 1
            self._ledger_ends[metadata.partition] = max(
                after, self._ledger_ends.get(metadata.partition, 0)
            )

    def _snapshot_due(self, now: int) -> list[dict[str, Any]]:
        """The snapshot records to send with this transaction, if one is due: the state with
        every entry recorded so far (all in this transaction or committed before it)."""
        assert self.processor is not None
        every = self.settings.snapshot_every_entries
        seq = len(self.processor.engine.ledger)
        if not every or seq - self._snapshot_seq < every:
            return []
        self._snapshot_seq = seq
        state = self.processor.state()
        owner = self.settings.transactional_id
        return snapshot_records(owner, seq, state, self._ledger_ends, now)

    async def _send(
        self, topic: str, value: dict[str, Any], record: str | None, *, traced: bool = False
    ) -> asyncio.Future:
        future = await self.producer.send(topic, value, record=record, wait=False, traced=traced)
        assert isinstance(future, asyncio.Future)
        return future

    async def _dead_letter(
        self, topic: str, record: ConsumerRecord, exc: Exception
    ) -> asyncio.Future:
        if isinstance(exc, BadRecord):  # decoded, but not a value billing can act on
            exc = InvalidValue(str(exc))
        value, headers = dead_letter(record, exc, topic=topic, group=self.settings.consumer_group)
        dlq = dead_letter_topic(topic, self._catalog)
        log.warning("dead-lettered %s/%d/%d: %s", topic, record.partition, record.offset, exc)
        future = await self.producer.send_raw(
            dlq, value, key=record.key, headers=headers, wait=False
        )
        assert isinstance(future, asyncio.Future)
        return future


M = TypeVar("M", bound=AvroModel)


class _FenceCheck(ConsumerRebalanceListener):
    """Notes each assignment, for the consume loop's check that we were not fenced."""

    def __init__(self) -> None:
        self.pending = False

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.pending = bool(assigned)


def _validated(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.from_avro(data)
    except ValidationError as exc:
        raise InvalidValue(str(exc)) from exc


def build(settings: Settings) -> Billing:
    return Billing(settings)
