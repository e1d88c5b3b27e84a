"""The `scheduler.leases` changelog: the requests an instance owns, so another can take them over.

Each request the scheduler admits belongs to a shard, the partition number it was admitted from
(`inference.requests`, `billing.reservations` and `inference.outcomes` partition n, one consumer
group member's share with the range assignor). Its record here goes to partition n too, keyed by
request id: waiting (PENDING) or placed (LEASED, STARTED with the lease's grant time and
first-chunk deadline), and a tombstone once it ended. The topic is compacted, so a partition
holds about one record per unended request of its shard, plus what the cleaner has not removed.

An instance given shard n reads partition n to its end (`ChangelogReader.read`) and recovers each
request before it handles any record of the shard (the consumer's rebalance listener runs under
the lock its record handling takes).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from cocoon.core import codec
from cocoon.core.bus.security import KafkaSecurity
from cocoon.core.codec import models
from cocoon.core.contracts import Topic
from cocoon.scheduler.dispatcher import Phase, Request
from cocoon.scheduler.pool import Lease

log = logging.getLogger(__name__)

LEASES = Topic.SCHEDULER_LEASES
RECORD = "cocoon.scheduler.OwnedRequest"


def owned_record(
    request: Request, lease: Lease | None, instance: str, now: float
) -> models.OwnedRequest:
    """What a new owner needs of a request that has not ended (its changelog value)."""
    phase: models.OwnedPhaseSymbol = "PENDING"
    if lease is not None:
        phase = "STARTED" if request.phase is Phase.STARTED or lease.started else "LEASED"
    return models.OwnedRequest(
        request_id=request.request_id,
        model=request.model,
        phase=phase,
        max_coefficient=request.max_coefficient,
        gateway_id=request.gateway_id,
        candidates=sorted(request.candidates),
        deadline_at=_ts(request.deadline),
        received_at=_ts(request.received_at),
        wait_until=_ts(request.wait_until),
        busy_until=_ts(request.busy_until),
        attempt=request.attempt,
        tried=sorted(request.tried),
        worker_id=lease.worker_id if lease is not None else None,
        granted_at=_ts(lease.granted_at) if lease is not None else None,
        lease_expires_at=_ts(lease.first_chunk_deadline) if lease is not None else None,
        scheduler_instance=instance,
        written_at=_ts(now),
    )


@dataclass(frozen=True)
class Recovered:
    request: Request
    lease: Lease | None  # None: it was waiting for a worker


def recovered(owned: models.OwnedRequest, shard: int) -> Recovered:
    """The dispatcher's request (and lease) from its changelog record."""
    request = Request(
        request_id=owned.request_id,
        model=owned.model,
        max_coefficient=owned.max_coefficient,
        gateway_id=owned.gateway_id,
        deadline=owned.deadline_at.timestamp(),
        received_at=owned.received_at.timestamp(),
        wait_until=owned.wait_until.timestamp(),
        busy_until=owned.busy_until.timestamp(),
        attempt=owned.attempt,
        worker_id=owned.worker_id or "",
        tried=set(owned.tried),
        candidates=frozenset(owned.candidates),
        shard=shard,
    )
    if owned.phase == "PENDING" or owned.worker_id is None:
        return Recovered(request, None)
    request.phase = Phase.STARTED if owned.phase == "STARTED" else Phase.LEASED
    granted = owned.granted_at or owned.written_at
    expires = owned.lease_expires_at or granted
    lease = Lease(
        request_id=owned.request_id,
        worker_id=owned.worker_id,
        model=owned.model,
        attempt=owned.attempt,
        granted_at=granted.timestamp(),
        first_chunk_deadline=expires.timestamp(),
        started=owned.phase == "STARTED",
    )
    return Recovered(request, lease)


@dataclass(frozen=True)
class ShardRead:
    """What `ChangelogReader.read` found: the unended requests and what reading cost."""

    requests: list[Recovered]
    records: int  # records read, tombstones and superseded values included
    seconds: float


class ChangelogReader:
    """Reads shards of the changelog on a rebalance. Connected once, at start, so a takeover
    does not wait for a new connection (TLS and SASL cost more than reading a shard)."""

    def __init__(self, bootstrap: str, prefix: str, *, client_id: str) -> None:
        self.topic = prefix + LEASES
        self.kafka = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id=client_id,
            isolation_level="read_committed",
            # A fetch at the end of a partition is answered after this wait (500 ms by
            # default), and a read ends with one.
            fetch_max_wait_ms=20,
            **KafkaSecurity.from_env().aiokafka(),
        )

    async def start(self) -> None:
        await self.kafka.start()
        await self.kafka.beginning_offsets([TopicPartition(self.topic, 0)])  # metadata, now

    async def stop(self) -> None:
        await self.kafka.stop()

    async def read(self, shards: set[int]) -> ShardRead:
        """Partitions `shards` from their beginning to their end now; the latest value per
        request id wins and a tombstone removes it."""
        started = time.monotonic()
        if not shards:
            return ShardRead([], 0, 0.0)
        partitions = [TopicPartition(self.topic, shard) for shard in sorted(shards)]
        self.kafka.assign(partitions)
        ends = await self.kafka.end_offsets(partitions)
        # Positioned explicitly: `seek_to_beginning` only asks for a reset, and a `position`
        # read before it resolves is the end (the reset policy of a group-less consumer).
        starts = await self.kafka.beginning_offsets(partitions)
        for tp, start in starts.items():
            self.kafka.seek(tp, start)
        latest: dict[str, tuple[int, bytes | None]] = {}
        records = 0
        remaining = {tp for tp in partitions if starts[tp] < ends[tp]}
        while remaining:
            batch = await self.kafka.getmany(*remaining, timeout_ms=50, max_records=10_000)
            for tp, got in batch.items():
                for record in got:
                    if record.offset >= ends[tp]:
                        break
                    records += 1
                    if record.key is not None:
                        latest[record.key.decode()] = (tp.partition, record.value)
            for tp in list(remaining):
                if await self.kafka.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        self.kafka.assign([])
        return ShardRead(_decoded(latest), records, time.monotonic() - started)


def _decoded(latest: dict[str, tuple[int, bytes | None]]) -> list[Recovered]:
    found = []
    for request_id, (shard, value) in latest.items():
        if value is None:
            continue
        try:
            found.append(recovered(codec.decode_model(value, reader=RECORD), shard))
        except (codec.DecodeError, ValueError) as exc:  # only schedulers write it: a bug
            log.error("changelog record of %s unreadable, not recovered: %s", request_id, exc)
    return found


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
