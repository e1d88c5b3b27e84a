"""Request ids co-partitioned with the account they bill, minted by the client.

The gateway's billing owns accounts by Kafka partition, and a request's receipts and outcomes
are keyed by its id: so the id must hash (Kafka's default partitioner, murmur2) to the same
partition as the account. The gateway refuses a sealed request whose id does not; it names the
account and the partition count (`GET /v1/cocoon/account`). This is `cocoon.core.request_ids`
again, for a client that does not depend on cocoon-core (tests/client checks they agree).
"""

from __future__ import annotations

import uuid

_CHOSEN_DIGITS = 3  # the last hex digits of a UUID4, random in it, are chosen


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as an unsigned int."""
    m, length = 0x5BD1E995, len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length % 4
    if tail:
        h ^= int.from_bytes(data[length - tail :], "little")
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record keyed `key`."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def new_request_id(account_id: str, partitions: int) -> str:
    """A fresh lower-case UUID4 that lands on `account_id`'s partition."""
    shard = partition_of(account_id, partitions)
    stem = str(uuid.uuid4())[:-_CHOSEN_DIGITS]
    for suffix in range(16**_CHOSEN_DIGITS):
        candidate = f"{stem}{suffix:0{_CHOSEN_DIGITS}x}"
        if partition_of(candidate, partitions) == shard:
            return candidate
    raise RuntimeError(f"no request id for partition {shard} of {partitions}")
