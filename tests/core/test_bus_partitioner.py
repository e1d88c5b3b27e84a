"""The cached partitioner picks exactly the partition Kafka's default (murmur2) picks."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from cocoon.core.bus.partitioner import CachedKeyPartitioner


def test_same_partition_as_the_default_partitioner_for_every_key():
    cached, default = CachedKeyPartitioner(max_keys=64), DefaultPartitioner()
    keys = [f"client-{i}".encode() for i in range(500)] + [b"", b"network:commission", b"\xff"]
    for partitions in ([0], list(range(3)), list(range(12))):
        for _ in range(2):  # the second pass is answered from the cache (or after a reset)
            for key in keys:
                assert cached(key, partitions, partitions) == default(key, partitions, partitions)


def test_the_cache_stays_bounded():
    cached = CachedKeyPartitioner(max_keys=10)
    for i in range(1000):
        cached(f"request-{i}".encode(), [0, 1, 2], [0, 1, 2])
    assert len(cached._hashes) <= 10


def test_no_key_goes_to_an_available_partition():
    cached = CachedKeyPartitioner()
    assert {cached(None, [0, 1, 2], [2]) for _ in range(20)} == {2}
