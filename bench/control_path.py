"""Control-path throughput: requests per second completed through gateway, billing and scheduler.

Starts the network on one machine (`LocalNetwork`: a private broker, the five services, N
workers) with the paced engine stand-in (bench/paced_engine.py: 1 ms to the first token, 1 ms
per token, 64 slots per engine, so the engines are never the bottleneck), then keeps
`--concurrency` short non-streamed chat requests (`max_tokens` 2) in flight against the gateway
for `--seconds`, after `--warmup-seconds`:

    .venv/bin/python bench/control_path.py [--workers 4] [--concurrency 64] [--seconds 20]

Every request takes the whole control path: HTTP and admission at the gateway, the request on
the bus, placement by the scheduler, the sealed work item, the worker-proxy, the sealed answer,
the receipt and the outcome (billing captures the receipt and settles the hold). CPU per request
of each process is its user + system time during the timed part (/proc/<pid>/stat, all its
threads) over the requests completed in it. Ends with one JSON line:
`{"bench": "control_path", "req_per_s": ..., "cpu_ms_per_req": {"gateway": ..., ...}}`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from e2e_overhead import (
    UNLIMITED_API,
    chat_network,
    percentile,
    private_network_environment,
    start_paced_engine,
)

from cocoon.core.kafka import broker
from cocoon.network.engine_process import SMOLLM2_MODEL

TICKS = os.sysconf("SC_CLK_TCK")
SERVICES = ("gateway", "billing", "scheduler", "attestation")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def process_cpu(network) -> dict[str, float]:
    """CPU seconds per service, the worker-proxies summed as one."""
    out: dict[str, float] = {}
    for child in network.supervisor.children:
        name = "worker-proxy" if child.name.startswith("w-local-") else child.name
        if child.alive:
            out[name] = out.get(name, 0.0) + cpu_seconds(child.process.pid)
    out["bench client"] = cpu_seconds(os.getpid())
    return out


def failure_reason(response: httpx.Response) -> str:
    """`<status> <error code>: <message>` of an OpenAI-style error answer, to tell failures
    apart in the output (the gateway's logs go with the network's private directory)."""
    try:
        error = response.json().get("error") or {}
    except ValueError:
        return str(response.status_code)
    code = error.get("code") or error.get("type") or "?"
    return f"{response.status_code} {code}: {str(error.get('message', ''))[:120]}"


async def load(args: argparse.Namespace, network) -> dict:
    body = {
        "model": SMOLLM2_MODEL,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": args.max_tokens,
        "stream": False,
    }
    headers = {"Authorization": f"Bearer {network.api_key}"}
    url = f"{network.gateway_url}/v1/chat/completions"
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    timed = {"on": False}
    latencies: list[float] = []
    failures: dict[str, int] = {}
    stop_at = time.monotonic() + args.warmup_seconds + args.seconds

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one_loop() -> None:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    response = await client.post(url, json=body, headers=headers)
                    ok = response.status_code == 200
                    reason = failure_reason(response)
                except httpx.HTTPError as exc:
                    ok, reason = False, type(exc).__name__
                if not timed["on"]:
                    continue
                if ok:
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    failures[reason] = failures.get(reason, 0) + 1

        loops = [asyncio.create_task(one_loop()) for _ in range(args.concurrency)]
        await asyncio.sleep(args.warmup_seconds)
        timed["on"] = True
        before, began = process_cpu(network), time.monotonic()
        await asyncio.sleep(args.seconds)
        after, elapsed = process_cpu(network), time.monotonic() - began
        completed = len(latencies)
        await asyncio.gather(*loops)
    per_request = {
        name: round((after[name] - before.get(name, 0.0)) * 1000 / max(1, completed), 3)
        for name in after
    }
    return {
        "bench": "control_path",
        "req_per_s": round(completed / elapsed, 1),
        "cpu_ms_per_req": per_request,
        "completed": completed,
        "failed": failures,
        "latency_ms": {
            "p50": round(percentile(latencies, 0.5), 1) if latencies else None,
            "p99": round(percentile(latencies, 0.99), 1) if latencies else None,
        },
        "workers": args.workers,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--max-tokens", type=int, default=2)
    parser.add_argument("--slots", type=int, default=64, help="paced engine slots per worker")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    home, layout, _ = private_network_environment("control", UNLIMITED_API)
    from cocoon.network import local  # after the environment is set

    pacing = ("--ttft-ms", "1", "--token-ms", "1", "--slots", str(args.slots))
    local.start_engine = functools.partial(start_paced_engine, pacing=pacing)
    network = chat_network(args.workers)
    network.grants = {account: 10**9 * 10**9 for account in network.grants}  # never runs out
    try:
        network.start(ready_timeout_s=300)
        network.wait_for_workers(ready_timeout_s=300)
        print(f"# load average before: {os.getloadavg()}", file=sys.stderr)
        print(json.dumps(asyncio.run(load(args, network))))
    finally:
        network.stop()
        broker.stop(layout)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
