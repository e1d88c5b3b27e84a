"""How long billing takes to rebuild its state at start or takeover: full replay vs snapshot.

    .venv/bin/python bench/billing_takeover.py [--entries 1000000,10000000]
        [--recent 20000] [--tail 10000] [--skip-full-above N]

For each ledger length N, on a private local broker and fresh topics, N ledger entries are made
by the domain engine (100 clients, 8 workers; each request a hold then a charge) and produced to
`billing.ledger` as the service writes them (1 LedgerEntry record per hold, 3 per charge). All
but the last `--recent` entries were settled two days ago, outside the default one-day
idempotence window; the recent ones are settled now, so the snapshot carries them as a running
service's would. The snapshot a running service would have written is produced to
`billing.snapshots` `--tail` entries before the end (the service writes one every
`COCOON_SNAPSHOT_EVERY_ENTRIES`, 20,000 by default, so a takeover finds on average half that
after the newest). Not timed. Timed, each as `Billing.start` does it:

* full replay: `read_ledger_from` from the beginning + `Processor(entries)` (no snapshot);
* snapshot: `read_snapshot` + `read_ledger_from` the snapshot's offsets + `Processor(snapshot=)`.

Both must end in the same balances and open holds. One JSON line per configuration, with the
process's peak RSS after it (the snapshot path runs first, so its figure is the build's and its
own; the full replay's includes every entry held at once). Signatures are not checked (verify
accepts all): the ledger is what is timed, not Ed25519.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path

from cocoon.billing.engine import BillingEngine
from cocoon.billing.ledger import Entry
from cocoon.billing.pricing import Prices, Usage
from cocoon.billing.receipts import Receipt
from cocoon.billing.stream import LEDGER_TOPIC, ledger_records
from cocoon.billing.stream_handlers import Processor
from cocoon.billing.stream_replay import LEDGER_RECORD, read_ledger_from, reader, topic_partitions
from cocoon.billing.stream_snapshot import (
    SNAPSHOT_RECORD,
    SNAPSHOTS_TOPIC,
    read_snapshot,
    snapshot_records,
)
from cocoon.core.bus import BusProducer
from cocoon.core.bus.admin import apply_topics
from cocoon.core.bus.settings import ProducerSettings
from cocoon.core.catalog import load_catalog
from cocoon.core.codec.timestamps import now_millis
from cocoon.core.kafka import broker

PRICES = Prices(price_per_token=100, worker_fee_per_token=80)
CLIENTS, WORKERS = 100, 8
OWNER = "billing-bench"
DAY_MS = 86_400_000
FLUSH_EVERY = 20_000  # entries between waits for the broker's acks
# Building only: batches of records per partition (the service sends each transaction's at once).
BULK = ProducerSettings(linger_ms=20)


def _accept(_receipt: Receipt) -> bool:
    return True


def processor(entries: list[Entry], snapshot: dict | None = None) -> Processor:
    return Processor(
        PRICES,
        _accept,
        entries,
        hold_grace_ms=0,
        outcome_grace_ms=0,
        snapshot=snapshot,
        window_ms=DAY_MS,
    )


def outcome(p: Processor) -> dict:
    """What both ways must agree on: the non-zero balances and the open holds."""
    engine = p.engine
    return {
        "balances": {a: n for a, n in engine.ledger.balances().items() if n},
        "open_holds": sorted(h.request_id for h in engine.open_holds()),
    }


class LedgerWriter:
    """Produces entries to `billing.ledger` as the service does, with their sequence numbers."""

    def __init__(self, producer: BusProducer) -> None:
        self.producer = producer
        self.seq = 0
        self.sends: list[asyncio.Future] = []

    async def write(self, entries: list[Entry]) -> None:
        for entry in entries:
            for record in ledger_records(entry, self.seq):
                future = await self.producer.send(
                    LEDGER_TOPIC, record, record=LEDGER_RECORD, wait=False, traced=False
                )
                assert isinstance(future, asyncio.Future)
                self.sends.append(future)
            self.seq += 1
        entries.clear()
        await asyncio.gather(*self.sends)
        self.sends.clear()


async def build(bootstrap: str, prefix: str, n: int, recent: int, tail: int) -> tuple[dict, int]:
    """Produce a ledger of `n` entries and the snapshot `tail` entries before its end;
    (what the engine ends with, snapshot bytes)."""
    now = now_millis()
    old = now - 2 * DAY_MS
    pending: list[Entry] = []
    book = processor([]).book  # the balance records' bookkeeping, part of the snapshot

    def sink(entry: Entry) -> None:
        pending.append(entry)
        book.applied(entry)

    engine = BillingEngine(PRICES, _accept, sink=sink, keep_entries=False)
    size = 0
    async with BusProducer(bootstrap, client_id="bench", prefix=prefix, settings=BULK) as producer:
        ledger = LedgerWriter(producer)
        for c in range(CLIENTS):
            engine.credit_topup(f"bench-{c}", f"c{c}", 10**15, "trial", at_ms=old)
        i = 0
        while len(engine.ledger) < n:
            at = now if len(engine.ledger) >= n - recent else old
            rid, client, worker = f"r{i}", f"c{i % CLIENTS}", f"w{i % WORKERS}"
            engine.open_hold(rid, client, max_tokens=100, prompt_size=400, max_coefficient=1000,
                             expires_at_ms=at, at_ms=at)  # fmt: skip
            if len(engine.ledger) < n:
                usage = Usage(300, 100, 50, 0)
                receipt = Receipt(f"{rid}:1", rid, 1, worker, "m", usage, 1000, True, b"", b"",
                                  at, at)  # fmt: skip
                engine.capture(receipt, at_ms=at)
            i += 1
            if len(pending) >= FLUSH_EVERY:
                await ledger.write(pending)
                engine.forget_settled(now - DAY_MS)
            if not size and len(engine.ledger) >= n - tail:
                # Where a running service's newest snapshot would be: every entry so far.
                await ledger.write(pending)
                engine.forget_settled(now - DAY_MS)
                state = {"engine": engine.state(), "book": book.snapshot()}
                ends = await _ends(bootstrap, prefix)
                records = snapshot_records(OWNER, len(engine.ledger), state, ends, now_millis())
                for record in records:
                    await producer.send(SNAPSHOTS_TOPIC, record, record=SNAPSHOT_RECORD)
                size = sum(len(r["state"]) for r in records)
        await ledger.write(pending)
    return {
        "balances": {a: n for a, n in engine.ledger.balances().items() if n},
        "open_holds": sorted(h.request_id for h in engine.open_holds()),
    }, size


async def _ends(bootstrap: str, prefix: str) -> dict[int, int]:
    """billing.ledger's end offsets: the tail after the snapshot starts there."""
    async with reader(bootstrap, "bench-ends") as consumer:
        partitions = await topic_partitions(consumer, prefix + LEDGER_TOPIC)
        ends = await consumer.end_offsets(partitions)
    return {tp.partition: offset for tp, offset in ends.items()}


async def full_replay(bootstrap: str, prefix: str) -> tuple[float, int, dict]:
    start = time.perf_counter()
    read = await read_ledger_from(bootstrap, prefix=prefix, timeout_s=7200)
    p = processor(read.entries)
    return time.perf_counter() - start, len(read.entries), outcome(p)


async def from_snapshot(bootstrap: str, prefix: str) -> tuple[float, int, dict]:
    start = time.perf_counter()
    snapshot = await read_snapshot(bootstrap, OWNER, prefix=prefix)
    assert snapshot is not None
    read = await read_ledger_from(
        bootstrap, prefix=prefix, from_offsets=snapshot.ledger_offsets, from_seq=snapshot.seq
    )
    p = processor(read.entries, snapshot.state)
    return time.perf_counter() - start, len(read.entries), outcome(p)


def peak_rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


async def one(bootstrap: str, n: int, args: argparse.Namespace) -> None:
    prefix = f"bench.takeover.{uuid.uuid4().hex[:6]}."
    catalog = load_catalog()
    specs = [catalog[LEDGER_TOPIC], catalog[SNAPSHOTS_TOPIC]]
    await asyncio.to_thread(apply_topics, bootstrap, specs, prefix=prefix)
    built = time.perf_counter()
    expected, size = await build(bootstrap, prefix, n, args.recent, args.tail)
    built = time.perf_counter() - built
    common = {"bench": "billing_takeover", "ledger_entries": n, "recent": args.recent}
    seconds, replayed, restored = await from_snapshot(bootstrap, prefix)
    assert restored == expected, "the snapshot restored another state"
    line = {**common, "mode": "snapshot", "seconds": round(seconds, 3),
            "snapshot_bytes": size, "tail_entries": replayed,
            "peak_rss_mb": peak_rss_mb()}  # fmt: skip
    print(json.dumps(line), flush=True)
    if n <= args.skip_full_above:
        seconds, replayed, rebuilt = await full_replay(bootstrap, prefix)
        assert replayed == n and rebuilt == expected, "the full replay rebuilt another state"
        line = {**common, "mode": "full_replay", "seconds": round(seconds, 3),
                "peak_rss_mb": peak_rss_mb()}  # fmt: skip
        print(json.dumps(line), flush=True)
    print(f"  (building and producing the {n}-entry ledger took {built:.0f} s, not timed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", default="1000000,10000000")
    parser.add_argument("--recent", type=int, default=20_000, help="entries inside the window")
    parser.add_argument("--tail", type=int, default=10_000, help="entries after the snapshot")
    parser.add_argument("--skip-full-above", type=int, default=10**12)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="cocoon-bench-takeover-"))
    port = broker.free_port_pair()
    layout = broker.BrokerLayout(home=home / "kafka", port=port, controller_port=port + 1)
    bootstrap = broker.start(layout, timeout_s=300)
    # TLS + SCRAM as in production; this process's clients connect as the broker's admin.
    os.environ.update(layout.admin_security().env())
    try:
        for n in (int(v) for v in args.entries.split(",")):
            asyncio.run(one(bootstrap, n, args))
    finally:
        broker.stop(layout)


if __name__ == "__main__":
    main()
