"""Usage receipts captured per second: Ed25519 verification + pricing + ledger write.

    .venv/bin/python bench/billing_receipts.py [--receipts 20000] [--journal]
        [--verify-threads 1,2]

Setup (not timed): one client account with funds, N holds opened, N receipts signed by 8 worker
keys with the core crypto module's canonical encoding. Timed: `BillingEngine.capture` for every
receipt: content digest, the worker's current-verdict key check, Ed25519 verification over the
canonical bytes, cost, the balanced ledger entry and its application. `--journal` also appends
every entry to an fsynced JSON-lines file (the durable path used when billing runs alone).
A second timed pass replays every receipt (the at-least-once redelivery case). Reports wall-clock
rate and rate per CPU-second of this process (they differ on a shared or busy machine).

`--verify-threads` repeats the capture pass once per value on a fresh engine: with more than one,
each batch of 2,000 receipts (the service's batch) has its signatures checked on that many threads
first (`Ed25519ReceiptVerifier.check_ahead`, as the billing service does), then is captured in
order. 1 is the baseline: every signature verified inline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cocoon.billing.engine import BillingEngine
from cocoon.billing.journal import FileJournal
from cocoon.billing.pricing import Prices, Usage
from cocoon.billing.receipts import Ed25519ReceiptVerifier, Receipt, canonical_message

BATCH = 2_000


def build(
    n: int, sink, threads: int = 1
) -> tuple[BillingEngine, Ed25519ReceiptVerifier, list[Receipt], dict]:
    keys = {f"w{i}": Ed25519PrivateKey.generate() for i in range(8)}
    current = {w: k.public_key().public_bytes_raw() for w, k in keys.items()}
    verifier = Ed25519ReceiptVerifier(current.get, canonical_message, threads=threads)
    engine = BillingEngine(
        Prices(price_per_token=1000, worker_fee_per_token=800, completion_bps=30_000),
        verifier,
        sink=sink,
    )
    engine.open_account("acct-bench")
    engine.credit_deposit("1:00", 10**17, "acct-bench")
    receipts = []
    for i in range(n):
        rid = f"req-{i:08d}"
        engine.open_hold(rid, "acct-bench", max_tokens=512, prompt_size=2048,
                         max_coefficient=4000, expires_at_ms=10**12)  # fmt: skip
        worker = f"w{i % 8}"
        unsigned = Receipt(f"{rid}:1", rid, 1, worker, "smollm2", Usage(900, 300, 256, 64),
                           1500, True, current[worker], b"", 1, 2)  # fmt: skip
        signature = keys[worker].sign(canonical_message(unsigned))
        receipts.append(Receipt(**{**{f: getattr(unsigned, f) for f in Receipt.__slots__},
                                   "signature": signature}))  # fmt: skip
    return engine, verifier, receipts, current


def capture_all(engine: BillingEngine, verifier: Ed25519ReceiptVerifier, receipts: list) -> None:
    for i in range(0, len(receipts), BATCH):
        batch = receipts[i : i + BATCH]
        verifier.check_ahead(batch)  # a no-op with one thread
        for receipt in batch:
            assert engine.capture(receipt).status == "captured"


def timed_capture(n: int, journal_dir: Path | None, threads: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all threads) to capture n receipts on a fresh engine."""
    journal = FileJournal(journal_dir / f"ledger-{threads}.jsonl") if journal_dir else None
    engine, verifier, receipts, _ = build(n, journal, threads)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        capture_all(engine, verifier, receipts)
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        verifier.close()
        if journal is not None:
            journal.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--receipts", type=int, default=20_000)
    parser.add_argument("--journal", action="store_true", help="fsync every entry to a file")
    parser.add_argument(
        "--verify-threads", default="1,2", help="comma-separated, one capture pass each"
    )
    args = parser.parse_args()
    n = args.receipts
    with tempfile.TemporaryDirectory() as tmp:
        journal = FileJournal(Path(tmp) / "ledger.jsonl") if args.journal else None
        engine, _, receipts, current = build(n, journal)
        # Reference: the bare Ed25519 verification of the same receipts, nothing else.
        publics = {w: Ed25519PublicKey.from_public_bytes(k) for w, k in current.items()}
        messages = [(publics[r.worker_id], r.signature, canonical_message(r)) for r in receipts]
        cpu = time.process_time()
        for public, signature, message in messages:
            public.verify(signature, message)
        verify_cpu = time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        for receipt in receipts:
            assert engine.capture(receipt).status == "captured"
        captured, captured_cpu = time.perf_counter() - start, time.process_time() - cpu
        start = time.perf_counter()
        for receipt in receipts:
            assert engine.capture(receipt).status == "duplicate"
        replayed = time.perf_counter() - start
        if journal is not None:
            journal.close()
        passes = {
            t: timed_capture(n, Path(tmp) if args.journal else None, t)
            for t in (int(v) for v in args.verify_threads.split(","))
        }
    mode = "fsynced journal" if args.journal else "in-memory ledger"
    print(f"{n} receipts, {mode}")
    print(f"capture:  {n / captured:,.0f}/s wall  ({captured / n * 1e6:.1f} µs each)")
    # CPU time of this process: what one uncontended core sustains (wall time includes waiting
    # for the CPU on a shared machine, and fsync waits with --journal).
    print(f"capture:  {n / captured_cpu:,.0f}/s per CPU-second")
    print(f"bare Ed25519 verify: {n / verify_cpu:,.0f}/s per CPU-second")
    print(f"replayed: {n / replayed:,.0f}/s  ({replayed / n * 1e6:.1f} µs each, no-op)")
    for threads, (wall, cpu) in passes.items():
        print(f"capture in batches of {BATCH:,}, {threads} verify thread(s): "
              f"{n / wall:,.0f}/s wall, {n / cpu:,.0f}/s per CPU-second")  # fmt: skip


if __name__ == "__main__":
    main()
