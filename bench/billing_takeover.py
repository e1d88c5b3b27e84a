"""How long billing takes to rebuild its state at start or takeover: full replay vs snapshot.

    .venv/bin/python bench/billing_takeover.py [--entries 100000,1000000] [--skip-full-above N]

For each ledger length N, on a private local broker and fresh topics: N ledger entries are made
by the domain engine (100 clients, 8 workers; each request a hold then a charge, all settled
two days ago, so outside the default one-day idempotence window) and produced to
`billing.ledger` as the service writes them (2-3 LedgerEntry records per entry), then the
engine's snapshot after `forget_settled` (what a running service would have written) to
`billing.snapshots`. Not timed. Timed, each as `Billing.start` does it:

* full replay: `read_ledger_from` from the beginning + `Processor(entries)` (no snapshot);
* snapshot: `read_snapshot` + `read_ledger_from` the snapshot's offsets + `Processor(snapshot=)`.

Both must end in the same balances. One JSON line per configuration. Signatures are not
checked while building (verify accepts all): the ledger is what is timed, not Ed25519.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

from cocoon.billing.engine import BillingEngine
from cocoon.billing.pricing import Prices, Usage
from cocoon.billing.receipts import Receipt
from cocoon.billing.stream import LEDGER_TOPIC, ledger_records
from cocoon.billing.stream_handlers import Processor
from cocoon.billing.stream_replay import LEDGER_RECORD, read_ledger_from, reader, topic_partitions
from cocoon.billing.stream_snapshot import SNAPSHOT_RECORD, read_snapshot, snapshot_records
from cocoon.core.bus import BusProducer
from cocoon.core.bus.admin import apply_topics
from cocoon.core.catalog import load_catalog
from cocoon.core.codec.timestamps import now_millis
from cocoon.core.kafka import broker


def nonzero(balances: dict[str, int]) -> dict[str, int]:
    return {account: n for account, n in balances.items() if n}


PRICES = Prices(price_per_token=100, worker_fee_per_token=80)
CLIENTS, WORKERS = 100, 8
OWNER = "billing-bench"
DAY_MS = 86_400_000


def _accept(_receipt: Receipt) -> bool:
    return True


def processor(entries, snapshot=None) -> Processor:
    return Processor(
        PRICES,
        _accept,
        entries,
        hold_grace_ms=0,
        outcome_grace_ms=0,
        snapshot=snapshot,
        window_ms=DAY_MS,
    )


async def build(bootstrap: str, prefix: str, n: int) -> tuple[dict[str, int], int]:
    """Produce a ledger of `n` entries and the snapshot after it; (balances, snapshot bytes)."""
    old = now_millis() - 2 * DAY_MS
    sends: list[asyncio.Future] = []
    seq = 0
    async with BusProducer(bootstrap, client_id="bench", prefix=prefix) as producer:

        async def out(entry) -> None:
            nonlocal seq
            for record in ledger_records(entry, seq):
                sends.append(
                    await producer.send("billing.ledger", record, record=LEDGER_RECORD, wait=False)
                )
            seq += 1

        pending: list = []
        engine = BillingEngine(PRICES, _accept, sink=pending.append, keep_entries=False)
        for c in range(CLIENTS):
            engine.credit_topup(f"bench-{c}", f"c{c}", 10**15, "trial", at_ms=old)
        i = 0
        while len(engine.ledger) < n:
            rid, client, worker = f"r{i}", f"c{i % CLIENTS}", f"w{i % WORKERS}"
            engine.open_hold(rid, client, max_tokens=100, prompt_size=400, max_coefficient=1000,
                             expires_at_ms=old, at_ms=old)  # fmt: skip
            if len(engine.ledger) < n:
                usage = Usage(300, 100, 50, 0)
                receipt = Receipt(f"{rid}:1", rid, 1, worker, "m", usage, 1000, True, b"", b"",
                                  old, old)  # fmt: skip
                engine.capture(receipt, at_ms=old)
            i += 1
            if len(pending) >= 5000:
                for entry in pending:
                    await out(entry)
                pending.clear()
                await asyncio.gather(*sends)
                sends.clear()
                engine.forget_settled(now_millis() - DAY_MS)
        for entry in pending:
            await out(entry)
        await asyncio.gather(*sends)
        engine.forget_settled(now_millis() - DAY_MS)
        ends = await _ends(bootstrap, prefix)
        state = {"engine": engine.state(), "book": processor([]).book.snapshot()}
        records = snapshot_records(OWNER, len(engine.ledger), state, ends, now_millis())
        for record in records:
            await producer.send("billing.snapshots", record, record=SNAPSHOT_RECORD)
    size = sum(len(r["state"]) for r in records)
    return nonzero(engine.ledger.balances()), size


async def _ends(bootstrap: str, prefix: str) -> dict[int, int]:
    """billing.ledger's end offsets: the (empty) tail after the snapshot starts there."""
    async with reader(bootstrap, "bench-ends") as consumer:
        partitions = await topic_partitions(consumer, prefix + LEDGER_TOPIC)
        ends = await consumer.end_offsets(partitions)
    return {tp.partition: offset for tp, offset in ends.items()}


async def full_replay(bootstrap: str, prefix: str) -> tuple[float, dict[str, int]]:
    start = time.perf_counter()
    read = await read_ledger_from(bootstrap, prefix=prefix, timeout_s=3600)
    p = processor(read.entries)
    return time.perf_counter() - start, nonzero(p.engine.ledger.balances())


async def from_snapshot(bootstrap: str, prefix: str) -> tuple[float, dict[str, int]]:
    start = time.perf_counter()
    snapshot = await read_snapshot(bootstrap, OWNER, prefix=prefix)
    assert snapshot is not None
    read = await read_ledger_from(
        bootstrap, prefix=prefix, from_offsets=snapshot.ledger_offsets, from_seq=snapshot.seq
    )
    p = processor(read.entries, snapshot.state)
    return time.perf_counter() - start, nonzero(p.engine.ledger.balances())


async def one(bootstrap: str, n: int, skip_full_above: int) -> None:
    prefix = f"bench.takeover.{uuid.uuid4().hex[:6]}."
    catalog = load_catalog()
    specs = [catalog["billing.ledger"], catalog["billing.snapshots"]]
    await asyncio.to_thread(apply_topics, bootstrap, specs, prefix=prefix)
    built = time.perf_counter()
    balances, size = await build(bootstrap, prefix, n)
    built = time.perf_counter() - built
    seconds, restored = await from_snapshot(bootstrap, prefix)
    assert restored == balances, "the snapshot restored other balances"
    line = {"bench": "billing_takeover", "ledger_entries": n, "mode": "snapshot",
            "seconds": round(seconds, 3), "snapshot_bytes": size}  # fmt: skip
    print(json.dumps(line), flush=True)
    if n <= skip_full_above:
        seconds, replayed = await full_replay(bootstrap, prefix)
        assert replayed == balances, "the full replay rebuilt other balances"
        line = {"bench": "billing_takeover", "ledger_entries": n, "mode": "full_replay",
                "seconds": round(seconds, 3)}  # fmt: skip
        print(json.dumps(line), flush=True)
    print(f"  (building and producing the {n}-entry ledger took {built:.0f} s, not timed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", default="100000,1000000")
    parser.add_argument("--skip-full-above", type=int, default=10**12)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="cocoon-bench-takeover-"))
    port = broker.free_port_pair()
    layout = broker.BrokerLayout(home=home / "kafka", port=port, controller_port=port + 1)
    bootstrap = broker.start(layout, timeout_s=300)
    try:
        for n in (int(v) for v in args.entries.split(",")):
            asyncio.run(one(bootstrap, n, args.skip_full_above))
    finally:
        broker.stop(layout)


if __name__ == "__main__":
    main()
