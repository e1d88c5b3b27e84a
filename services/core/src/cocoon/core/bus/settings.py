"""Client settings for the bus, tuned for latency: a token stream crosses Kafka several times.

Every value is explicit here (not left to library defaults) so a reader knows what runs:

* `fetch_max_wait_ms=500`: the longest the broker holds a fetch with nothing to return. The
  broker answers a waiting fetch the moment a record lands, read_committed or not (Kafka 4.1:
  a hop measured the same at 20 and 500 ms, bench/bus_roundtrip.py --hops), so this is not
  latency; it is what an idle consumer costs: each empty fetch is a TLS round trip and a
  wake-up in the client and the broker. At 20 ms five idle readers took ~15 % of a core in the
  client and ~35 % in the broker, on a 2-core machine that runs a dozen of them
  (docs/performance.md). The wait still bounds one case: a partition whose records sat unread
  for aiokafka's 100 ms prefetch backoff is left out of the next fetch until it returns.
* `fetch_min_bytes=1`: answer as soon as one record is there.
* `linger_ms=0`: no batching delay on send (1 ms measurably raised the round trip); under load,
  records queued behind an in-flight request batch anyway.
* `acks="all"` + idempotence: a sent record is on every in-sync replica, without duplicates from
  retries (billing and the registry rely on it).
* no compression: values are mostly ciphertext, which does not compress.
* `enable_auto_commit=False`: the consumer commits only what it has handled or dead-lettered.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Literal


def topic_prefix() -> str:
    """Physical topic names are `<prefix><catalog name>`; set per environment or test run."""
    return os.environ.get("COCOON_TOPIC_PREFIX", "")


@dataclass(frozen=True)
class ProducerSettings:
    linger_ms: int = 0
    acks: Literal["all", 0, 1] = "all"
    enable_idempotence: bool = True
    compression_type: str | None = None
    max_batch_size: int = 1_048_576  # bytes per partition batch; sealed chunks are small
    max_request_size: int = 8_388_608  # matches the largest max.message.bytes in the catalog
    request_timeout_ms: int = 30_000

    def kwargs(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ConsumerSettings:
    fetch_max_wait_ms: int = 500
    fetch_min_bytes: int = 1
    max_poll_records: int = 500
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    poll_timeout_ms: int = 100  # how long one loop iteration waits for records (not latency)

    def kwargs(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("poll_timeout_ms")
        return {**values, "enable_auto_commit": False}
