"""Request ids that land on their account's partition (billing's account shards, issue 13).

Billing owns accounts by partition: an account's *shard* is the partition its id hashes to on
the account-keyed topics (`inference.requests`, `billing.topups`, ...). Receipts, outcomes,
placements and reservations are keyed by request id, and the workers and the scheduler that
send them do not know the account. So a request id is minted to hash to the same partition as
its account: then partition *n* of every one of those topics holds exactly shard *n*'s records,
with every producer keeping Kafka's default partitioner.

An id stays a lower-case UUID (version 4): only its last three hex digits, random in a UUID4,
are chosen, among 4,096 candidates (12 partitions: 12 tries on average).
"""

from __future__ import annotations

import functools
import uuid

from cocoon.core.bus.partitioner import key_partition
from cocoon.core.catalog import spec_for
from cocoon.core.contracts import Topic

# The topics whose partition *n* is billing's shard *n*: keyed by account, or by a request id
# minted here. Their partition counts are part of the request-id contract.
SHARDED_TOPICS = (
    Topic.INFERENCE_REQUESTS,
    Topic.INFERENCE_ASSIGNMENTS,
    Topic.INFERENCE_OUTCOMES,
    Topic.USAGE_RECEIPTS,
    Topic.BILLING_RESERVATIONS,
    Topic.BILLING_GRANTS,
    Topic.BILLING_TOPUPS,
    Topic.BILLING_LEDGER,
)

_CHOSEN_DIGITS = 3


@functools.cache
def account_partitions() -> int:
    """The partition count every sharded topic shares (the catalog's)."""
    counts = {spec_for(topic).partitions for topic in SHARDED_TOPICS}
    if len(counts) != 1:
        raise RuntimeError(f"the sharded topics must share one partition count, not {counts}")
    return counts.pop()


def account_shard(account_id: str, partitions: int | None = None) -> int:
    """The partition (billing's shard) an account's records are keyed to."""
    return key_partition(account_id.encode(), partitions or account_partitions())


def is_co_partitioned(request_id: str, account_id: str, partitions: int | None = None) -> bool:
    """Whether records keyed by `request_id` land on `account_id`'s partition."""
    count = partitions or account_partitions()
    return key_partition(request_id.encode(), count) == account_shard(account_id, count)


def new_request_id(account_id: str, partitions: int | None = None) -> str:
    """A fresh request id co-partitioned with `account_id`."""
    count = partitions or account_partitions()
    shard = account_shard(account_id, count)
    stem = str(uuid.uuid4())[:-_CHOSEN_DIGITS]
    for suffix in range(16**_CHOSEN_DIGITS):
        candidate = f"{stem}{suffix:0{_CHOSEN_DIGITS}x}"
        if key_partition(candidate.encode(), count) == shard:
            return candidate
    # (11/12)^4096: never, short of a partition count above 4,096.
    raise RuntimeError(f"no request id for partition {shard} of {count} among the candidates")
