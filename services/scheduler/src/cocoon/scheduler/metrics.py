"""The scheduler's own Prometheus metrics (`cocoon_scheduler_*`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from cocoon.scheduler.dispatcher import Dispatcher, Phase
from cocoon.scheduler.pool import WorkerPool

ASSIGNMENTS = Counter(
    "cocoon_scheduler_assignments",
    "Assignments published, first placements and re-placements after a lease",
    ["kind"],
)
ENDED = Counter(
    "cocoon_scheduler_requests_ended",
    "Requests the scheduler ended itself, by error code (no_worker, lease_expired, ...)",
    ["code"],
)
FIRST_CHUNKS = Counter("cocoon_scheduler_first_chunks", "Leases satisfied by a first chunk")
RECEIPTS_REJECTED = Counter(
    "cocoon_scheduler_receipts_rejected",
    "Receipts billing refused that count against the worker's reputation",
    ["reason"],
)
FORGED = Counter(
    "cocoon_scheduler_forged_records",
    "Heartbeats and outcomes refused: no valid signature by the worker's attested key",
    ["topic", "code"],
)
RECOVERY_SECONDS = Histogram(
    "cocoon_scheduler_shard_recovery_seconds",
    "Reading the lease changelog of the shards a rebalance gave this instance",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REQUESTS = Gauge("cocoon_scheduler_requests", "Requests the scheduler tracks, by phase", ["phase"])
PLACEABLE = Gauge(
    "cocoon_scheduler_placeable_workers", "Workers that can take a request now", ["model"]
)


def observe(dispatcher: Dispatcher, pool: WorkerPool, now: float) -> None:
    """Refresh the gauges (called about once a second, not per record)."""
    for phase in (Phase.PENDING, Phase.LEASED, Phase.STARTED):
        REQUESTS.labels(phase.value).set(dispatcher.count(phase))
    PLACEABLE.clear()
    for model, count in pool.models(now).items():
        PLACEABLE.labels(model).set(count)
