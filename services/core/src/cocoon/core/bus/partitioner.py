"""The partition of a keyed record, as Kafka's Java clients pick it, with each key's hash kept.

aiokafka's `DefaultPartitioner` computes murmur2 in pure Python for every keyed record (about
10 us for a short key). Cocoon's keys repeat (accounts, clients, workers), and a billing
transaction writes thousands of records under a handful of them, so each key is hashed once.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.partitioner import DefaultPartitioner, murmur2


def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's and aiokafka's) gives `key` among
    `partitions`: the positive murmur2 hash modulo the count."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class CachedKeyPartitioner:
    """Same choice as `DefaultPartitioner` (murmur2 of the key; random for no key)."""

    def __init__(self, max_keys: int = 65_536) -> None:
        self._max_keys = max_keys
        self._hashes: dict[bytes, int] = {}
        self._unkeyed = DefaultPartitioner()

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        if key is None:
            return self._unkeyed(key, all_partitions, available)
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()  # one-off keys (request ids) must not grow it without end
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF  # as key_partition
        return all_partitions[hashed % len(all_partitions)]
