"""Quote verifications per second on one core, with a warm collateral cache.

    .venv/bin/python bench/attestation_verify.py [--seconds 5]

Each iteration is a full `Verifier.verify`: parse the quote (PCK chain included), pick the
trusted root, look up the collateral (already loaded and parsed: the warm-cache case), run
dcap-qvl (quote + QE report signatures, PCK/TCB chains, CRLs, TCB level) and the policy.
Two workloads: a simulated-TDX quote that is accepted, and the real Phala sample quote
(dcap-qvl verifies it UpToDate; policy then rejects it for lack of claims, after all the work).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from cocoon.attestation.claims import Claims, Freshness
from cocoon.attestation.collateral import BundleSource, load_bundle
from cocoon.attestation.policy import Policy
from cocoon.attestation.simtdx import SimTdx
from cocoon.attestation.verify import Verifier

DATA = Path(__file__).resolve().parents[1] / "tests" / "attestation" / "data"


def run(label: str, verifier: Verifier, quote: bytes, claims, at: int, seconds: float) -> float:
    verifier.verify(quote, claims, at)  # warm up
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        verifier.verify(quote, claims, at)
        n += 1
    rate = n / (time.perf_counter() - start)
    print(f"{label:<44} {rate:8.0f} verifications/s  ({1e6 / rate:6.0f} µs each, n={n})")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()

    now = int(time.time())
    with tempfile.TemporaryDirectory() as tmp:
        sim = SimTdx.load_or_create(tmp)
    claims = Claims(
        os.urandom(32), os.urandom(32), os.urandom(1216), "qwen", Freshness(timestamp=now)
    )
    quote = sim.quote(claims.report_data())
    sim_verifier = Verifier(sim.development_policy(), BundleSource([sim.collateral(now)]))
    assert sim_verifier.verify(quote, claims, now).accepted
    run("simulated TDX v4 quote, accepted", sim_verifier, quote, claims, now, args.seconds)

    col = load_bundle(DATA / "phala_tdx_quote_collateral.json")[0]
    real = (DATA / "phala_tdx_quote").read_bytes()
    real_verifier = Verifier(Policy.production(), BundleSource([col]))
    verdict = real_verifier.verify(real, None, col.not_after - 1)
    assert verdict.tcb_status == "UpToDate" and verdict.stage == "policy"
    run(
        "real Intel TDX v4 quote (Phala sample), DCAP ok",
        real_verifier,
        real,
        None,
        col.not_after - 1,
        args.seconds,
    )


if __name__ == "__main__":
    main()
