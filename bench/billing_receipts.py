"""Usage receipts captured per second: Ed25519 verification + pricing + ledger write.

    .venv/bin/python bench/billing_receipts.py [--receipts 20000] [--journal]

Setup (not timed): one client account with funds, N holds opened, N receipts signed by 8 worker
keys with the core crypto module's canonical encoding. Timed: `BillingEngine.capture` for every
receipt: content digest, the worker's current-verdict key check, Ed25519 verification over the
canonical bytes, cost, the balanced ledger entry and its application. `--journal` also appends
every entry to an fsynced JSON-lines file (the durable path used when billing runs alone).
A second timed pass replays every receipt (the at-least-once redelivery case). Reports wall-clock
rate and rate per CPU-second of this process (they differ on a shared or busy machine).
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


def build(n: int, sink) -> tuple[BillingEngine, list[Receipt], dict]:
    keys = {f"w{i}": Ed25519PrivateKey.generate() for i in range(8)}
    current = {w: k.public_key().public_bytes_raw() for w, k in keys.items()}
    engine = BillingEngine(
        Prices(price_per_token=1000, worker_fee_per_token=800, completion_bps=30_000),
        Ed25519ReceiptVerifier(current.get, canonical_message),
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
    return engine, receipts, current


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--receipts", type=int, default=20_000)
    parser.add_argument("--journal", action="store_true", help="fsync every entry to a file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        journal = FileJournal(Path(tmp) / "ledger.jsonl") if args.journal else None
        engine, receipts, current = build(args.receipts, journal)
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
    n = args.receipts
    mode = "fsynced journal" if args.journal else "in-memory ledger"
    print(f"{n} receipts, {mode}")
    print(f"capture:  {n / captured:,.0f}/s wall  ({captured / n * 1e6:.1f} µs each)")
    # CPU time of this process: what one uncontended core sustains (wall time includes waiting
    # for the CPU on a shared machine, and fsync waits with --journal).
    print(f"capture:  {n / captured_cpu:,.0f}/s per CPU-second")
    print(f"bare Ed25519 verify: {n / verify_cpu:,.0f}/s per CPU-second")
    print(f"replayed: {n / replayed:,.0f}/s  ({replayed / n * 1e6:.1f} µs each, no-op)")


if __name__ == "__main__":
    main()
