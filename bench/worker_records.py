"""The cost of signing and checking worker records (issue 12): per heartbeat and per outcome.

    .venv/bin/python bench/worker_records.py [--seconds 2]

For each record kind, in CPU microseconds of one core: the worker-proxy's `sign_record`
(canonical bytes + Ed25519 sign), a reader's `verify_record` (canonical bytes + Ed25519 verify,
the key looked up in a dict as the services' verdict mirrors do), the Avro encode of the record
unsigned and signed (what the signature adds to every send), and the bytes it adds on the wire.
One JSON line per kind at the end, for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

from cocoon.core import codec
from cocoon.core.codec import models
from cocoon.core.crypto.keys import WorkerKeys
from cocoon.core.worker_records import sign_record, verify_record


def per_op_us(work: Callable[[], object], seconds: float) -> float:
    work()  # warm up
    n = 0
    # CPU time of this process, not wall time: the development machine is shared and loaded.
    start = time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for _ in range(100):
            work()
        n += 100
    return elapsed / n * 1e6


def records() -> dict[str, models.Heartbeat | models.Outcome]:
    now = datetime.now(UTC)
    return {
        "heartbeat": models.Heartbeat(
            worker_id="w-5e1b",
            models=["smollm2-135m-instruct"],
            state="READY",
            max_active_requests=4,
            active_requests=1,
            coefficient=1000,
            work_topic="work.w-5e1b",
            seq=1042,
            sent_at=now,
            engine_queue_depth=0,
            avg_request_ms=1850.5,
        ),
        "outcome": models.Outcome(
            request_id="0b7e5c1a-8d2f-4e6b-9c3a-5f1d2e7a9b40",
            attempt=1,
            worker_id="w-5e1b",
            model="smollm2-135m-instruct",
            status="SUCCEEDED",
            reported_by="worker-proxy",
            time_to_first_chunk_ms=42,
            duration_ms=1850,
            completion_tokens=96,
            finished_at=now,
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    keys = WorkerKeys.generate()
    mirror = {"w-5e1b": keys.public.signing_key}
    results = []
    for kind, record in records().items():
        signed = sign_record(keys, record)
        verify_record(signed, mirror.get)  # it must hold before it is timed
        result = {
            "bench": "worker_records",
            "record": kind,
            "sign_us": round(per_op_us(lambda r=record: sign_record(keys, r), args.seconds), 1),
            "verify_us": round(
                per_op_us(lambda s=signed: verify_record(s, mirror.get), args.seconds), 1
            ),
            "encode_unsigned_us": round(
                per_op_us(lambda r=record: codec.encode(r), args.seconds), 1
            ),
            "encode_signed_us": round(per_op_us(lambda s=signed: codec.encode(s), args.seconds), 1),
            "bytes_unsigned": len(codec.encode(record)),
            "bytes_signed": len(codec.encode(signed)),
        }
        results.append(result)
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
