"""Billing's snapshots on `billing.snapshots`: the processor's state, and reading it back.

A snapshot is the state after `seq` ledger entries (the engine's `state()` and the balance book),
zlib-compressed JSON cut into chunks of at most `CHUNK_BYTES`, one record per chunk keyed
`<owner>/<chunk>`, all written in the Kafka transaction that commits the entries it includes. So a
read_committed reader sees a snapshot only together with its entries. `ledger_offsets` are the
ledger positions after the previous transaction (known once it committed): reading
`billing.ledger` from there finds every entry after the snapshot, plus those of the snapshot's
own transaction, which the sequence number skips.

The topic is compacted: the newest record per key stays, so an older snapshot with more chunks
than the newest leaves stale chunks behind. They carry an older `seq`, and only a snapshot with
all its chunks is restored.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka.structs import ConsumerRecord

from cocoon.billing.stream_replay import read_to_end, reader
from cocoon.core import codec
from cocoon.core.contracts import Topic

log = logging.getLogger(__name__)

SNAPSHOTS_TOPIC = Topic.BILLING_SNAPSHOTS
SNAPSHOT_RECORD = "cocoon.billing.Snapshot"
# Below Kafka's default 1 MiB record limit, with room for the other fields and the batch header.
CHUNK_BYTES = 512 * 1024
STATE_VERSION = 1


@dataclass(frozen=True)
class Snapshot:
    seq: int  # ledger entries the state includes
    state: dict[str, Any]
    ledger_offsets: dict[int, int]  # billing.ledger partition -> where its tail starts


def snapshot_records(
    owner: str, seq: int, state: Mapping[str, Any], ledger_offsets: Mapping[int, int], now_ms: int
) -> list[dict[str, Any]]:
    """The `cocoon.billing.Snapshot` records (Avro dicts) of one snapshot."""
    text = json.dumps({"v": STATE_VERSION, **state}, separators=(",", ":"))
    blob = zlib.compress(text.encode(), 1)  # ids compress well; level 1 is the cheap one
    pieces = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)]
    offsets = {str(partition): offset for partition, offset in ledger_offsets.items()}
    return [
        {
            "snapshot_key": f"{owner}/{chunk}",
            "owner": owner,
            "seq": seq,
            "chunk": chunk,
            "chunks": len(pieces),
            "ledger_offsets": offsets,
            "state": piece,
            "created_at": now_ms,
        }
        for chunk, piece in enumerate(pieces)
    ]


def newest_snapshot(records: Iterable[Mapping[str, Any]], owner: str) -> Snapshot | None:
    """The newest snapshot of `owner` whose chunks are all among `records` (decoded, in log
    order: a later record of a key replaces an earlier one, as compaction would)."""
    latest: dict[str, Mapping[str, Any]] = {}
    for record in records:
        if record["owner"] == owner:
            latest[record["snapshot_key"]] = record
    by_seq: dict[int, dict[int, Mapping[str, Any]]] = {}
    for record in latest.values():
        by_seq.setdefault(record["seq"], {})[record["chunk"]] = record
    for seq in sorted(by_seq, reverse=True):
        chunks = by_seq[seq]
        first = chunks.get(0)
        if first is None or set(chunks) != set(range(first["chunks"])):
            continue  # partly replaced by a newer snapshot with fewer chunks
        blob = b"".join(chunks[i]["state"] for i in range(first["chunks"]))
        state = json.loads(zlib.decompress(blob))
        if state.pop("v") != STATE_VERSION:
            raise RuntimeError(f"snapshot {owner}@{seq} has an unknown state version")
        offsets = {int(p): int(o) for p, o in first["ledger_offsets"].items()}
        return Snapshot(seq, state, offsets)
    return None


async def read_snapshot(
    bootstrap: str,
    owner: str,
    *,
    prefix: str = "",
    timeout_s: float = 120.0,
    client_id: str = "billing",
) -> Snapshot | None:
    """The newest complete committed snapshot of `owner`, or None."""
    topic = prefix + SNAPSHOTS_TOPIC
    mine = f"{owner}/".encode()
    found: list[Mapping[str, Any]] = []

    def on_record(record: ConsumerRecord) -> None:
        if record.value is None or not (record.key or b"").startswith(mine):
            return
        try:
            found.append(codec.decode(record.value, reader=SNAPSHOT_RECORD)[1])
        except codec.DecodeError as exc:
            # Only billing writes this topic: a record it cannot read is a bug, never guessed at.
            raise RuntimeError(f"unreadable {topic} record at {record.offset}: {exc}") from exc

    async with reader(bootstrap, f"{client_id}-snapshot") as consumer:
        await read_to_end(consumer, topic, on_record, timeout_s=timeout_s)
    snapshot = newest_snapshot(found, owner)
    log.info(
        "snapshot of %s: %s",
        owner,
        f"{snapshot.seq} entries" if snapshot else "none (replaying the whole ledger)",
    )
    return snapshot
