"""Overhead of the full Cocoon path against calling the llama.cpp server directly, in one run.

Starts the whole network on one machine (`LocalNetwork`: a private broker, the five services,
one worker with its llama.cpp engine) and sends the SAME streamed chat request, by the same
httpx client code, either straight to that worker's engine (`network.engines[0].base_url`) or
through the gateway (gateway -> billing hold -> scheduler -> sealed work item -> worker-proxy ->
engine -> sealed chunks -> gateway). Since one engine serves both, the difference is the path:

    .venv/bin/python bench/e2e_overhead.py [--rounds1 60] [--rounds8 6] [--max-tokens 32]
        [--paths gateway,client] [--streams 1,8] [--long-rounds 5] [--engine paced] [--workers 1]
        [--baseline COMMIT]

Paths: `gateway` (the gateway seals: the OpenAI API on the gateway) and `client` (the client
seals: the local proxy `cocoon client serve`, in this process, in front of the gateway's sealed
relay); the baseline `direct` is the engine itself, measured in the same run.
`--baseline COMMIT` first measures all of it with the services as they were at COMMIT (read
from git), then with the work tree's: two networks, one after the other, each result line
tagged with its `code`.

* 1 stream: `--rounds1` rounds; each sends one request by every path, in random order.
* N streams (each of `--streams` above 1): `--rounds8` rounds; a round sends N requests at once
  by each path in turn (random order) and waits for all of them; overhead is (path - direct) at
  that matched concurrency.
* 256 tokens: `--long-rounds` rounds of one `--long-tokens` answer by every path, for the
  total time added (`added_total_pct_256`: path over direct, p50).

Ends with one JSON line per (path, streams):
`{"bench": "e2e_overhead", "path": "client", "streams": 1, "added_ttft_p50_ms": ...,
"added_ttft_p99_ms": ..., "added_total_pct_256": ...}` (the last for 1 stream only).

TTFT = from sending the request to the first SSE `data:` line carrying content; total = until
`[DONE]`. Per-hop breakdown (1 stream, via Cocoon): the bench reads the records of every hop from
the bus and subtracts their timestamps (`created_at`, Kafka record times, `sent_at`,
`produced_at`), all on one machine's clock, in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from cocoon.core import codec
from cocoon.core.bus.security import aiokafka_security
from cocoon.core.kafka import broker
from cocoon.network.engine_process import (
    SMOLLM2_MODEL,
    EngineProcess,
    free_port,
    start_engine,
)

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
HOP_TOPICS = (
    "inference.requests",
    "billing.reservations",
    "inference.assignments",
    "work.w-local-0",
    "inference.responses",
    "inference.outcomes",
)


@dataclass
class Sample:
    path: str  # "direct" | "gateway" | "client"
    streams: int
    ttft_ms: float
    total_ms: float
    tokens: int
    request_id: str | None = None
    sent_wall_ms: float = 0.0  # time.time() when the request was sent (for the hop breakdown)
    first_wall_ms: float = 0.0  # time.time() at the first content line


def body(max_tokens: int) -> dict:
    return {
        "model": SMOLLM2_MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def one_request(
    client: httpx.AsyncClient, url: str, headers: dict, payload: dict, path: str, streams: int
) -> Sample:
    ttft = None
    first_wall = 0.0
    tokens = 0
    sent_wall = time.time() * 1000
    started = time.perf_counter()
    async with client.stream("POST", url, json=payload, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code}: {await response.aread()}")
        request_id = response.headers.get("x-request-id")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"{path}: stream error {chunk['error']}")
            for choice in chunk.get("choices") or ():
                if ttft is None and (choice.get("delta") or {}).get("content"):
                    ttft = time.perf_counter() - started
                    first_wall = time.time() * 1000
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    total = time.perf_counter() - started
    if ttft is None:
        raise RuntimeError(f"{path}: no content in the stream")
    return Sample(
        path, streams, ttft * 1000, total * 1000, tokens, request_id, sent_wall, first_wall
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 60 samples is the largest one)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- the hop breakdown: every record of one request, read from the bus -----------------------------
@dataclass
class Hops:
    records: dict[str, dict] = field(default_factory=dict)  # request_id -> {step: ms}


async def collect_hops(bootstrap: str, prefix: str, hops: Hops, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=500,  # answered when a record lands; idle polls cost the bench CPU
        isolation_level="read_uncommitted",  # see billing's transactional writes as they land,
        **aiokafka_security(),
    )
    await consumer.start()
    try:
        partitions = []
        for topic in HOP_TOPICS:
            await consumer._client.force_metadata_update()
            ids = consumer.partitions_for_topic(prefix + topic) or set()
            partitions += [TopicPartition(prefix + topic, p) for p in ids]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            received = time.time() * 1000
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        _, value = codec.decode(record.value)
                    except codec.DecodeError:
                        continue
                    topic = record.topic[len(prefix) :]
                    steps = hops.records.setdefault(value.get("request_id", "?"), {})
                    note_hop(steps, topic, value, record.timestamp, received)
    finally:
        await consumer.stop()


def _ms(value) -> float:
    return value.timestamp() * 1000 if hasattr(value, "timestamp") else float(value)


def note_hop(steps: dict, topic: str, value: dict, record_ms: int, seen_ms: float) -> None:
    if topic == "inference.requests":
        steps["created"] = _ms(value["created_at"])
        steps["request_log"] = record_ms
    elif topic == "billing.reservations":
        steps["decided"] = _ms(value["decided_at"])
        steps["held_log"] = record_ms
    elif topic == "inference.assignments":
        steps["assigned"] = _ms(value["assigned_at"])
        steps["assigned_log"] = record_ms
    elif topic.startswith("work.") and value.get("action") == "RUN":
        steps["work_sent"] = _ms(value["sent_at"])
    elif topic == "inference.responses" and value.get("seq") == 0:
        steps["chunk0"] = _ms(value["produced_at"])
    elif topic == "inference.outcomes":
        steps["ttfc_worker"] = value.get("time_to_first_chunk_ms")


# -- runs ----------------------------------------------------------------------------------------
async def start_client_proxy(gateway: str, api_key: str):
    """The client-sealed path: `cocoon client serve` in this process, verifying the workers."""
    from cocoon.client.config import load_config
    from cocoon.client.server import ProxyServer
    from cocoon.client.session import SealedSession
    from cocoon.client.transport import SealingTransport

    session = SealedSession(gateway, api_key, load_config(gateway=gateway))
    proxy = ProxyServer(SealingTransport(session), "127.0.0.1", 0)
    await proxy.start()
    return proxy, session


async def run(
    args: argparse.Namespace, gateway: str, engines: list[str], api_key: str, bootstrap: str
):
    # The baseline spreads over the workers' engines as the scheduler spreads the paths' work.
    direct = itertools.cycle([f"{engine}/chat/completions" for engine in engines])
    targets = {"direct": ("", {})}
    if "gateway" in args.paths:
        targets["gateway"] = (
            f"{gateway}/v1/chat/completions",
            {"Authorization": f"Bearer {api_key}"},
        )
    proxy = session = None
    if "client" in args.paths:
        proxy, session = await start_client_proxy(gateway, api_key)
        targets["client"] = (f"http://127.0.0.1:{proxy.port}/v1/chat/completions", {})
    rng = random.Random(args.seed)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    samples: list[Sample] = []
    failures: list[str] = []
    hops = Hops()
    stop = asyncio.Event()
    collector = asyncio.create_task(
        collect_hops(bootstrap, os.environ["COCOON_TOPIC_PREFIX"], hops, stop)
    )
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def send(path: str, streams: int, max_tokens: int) -> Sample | None:
            url, headers = targets[path]
            url = next(direct) if path == "direct" else url
            try:
                return await one_request(client, url, headers, body(max_tokens), path, streams)
            except (RuntimeError, httpx.HTTPError) as exc:
                failures.append(f"{streams} stream(s) {path}: {exc}"[:300])
                return None

        def shuffled() -> list[str]:
            order = list(targets)
            rng.shuffle(order)
            return order

        print(f"warm-up: {args.warmup} requests per path ...", flush=True)
        for _ in range(args.warmup):
            for path in targets:
                await send(path, 1, args.max_tokens)
        print(f"1 stream: {args.rounds1} rounds ...", flush=True)
        for index in range(args.rounds1):
            if index and index % 20 == 0:
                print(f"  {index} rounds", flush=True)
            for path in shuffled():
                samples.append(await send(path, 1, args.max_tokens))
        for streams in (n for n in args.streams if n > 1):
            print(f"{streams} streams: {args.rounds8} rounds ...", flush=True)
            for _ in range(args.rounds8):
                for path in shuffled():
                    done = await asyncio.gather(
                        *(send(path, streams, args.max_tokens) for _ in range(streams))
                    )
                    samples += done
        print(f"{args.long_tokens} tokens: {args.long_rounds} rounds ...", flush=True)
        for _ in range(args.long_rounds):
            for path in shuffled():
                sample = await send(path, 1, args.long_tokens)
                if sample is not None:
                    sample.streams = 0  # marks the long answers (1 stream)
                samples.append(sample)
    stop.set()
    await collector
    if proxy is not None and session is not None:
        await proxy.stop()
        await session.aclose()
    for failure in failures:
        print("FAILED:", failure)
    return [s for s in samples if s is not None], hops, len(failures)


def report(samples: list[Sample], hops: Hops) -> None:
    print()
    header = (
        f"{'streams':>7} {'path':>8} {'n':>4} {'TTFT p50':>9} {'TTFT p99':>9}"
        f" {'total p50':>10} {'total p99':>10} {'tok':>4}"
    )
    print(header)
    rows = {}
    levels = sorted({s.streams for s in samples if s.streams > 0})
    paths = [p for p in ("direct", "gateway", "client") if any(s.path == p for s in samples)]
    for streams in levels:
        for path in paths:
            chosen = [s for s in samples if s.streams == streams and s.path == path]
            if not chosen:
                continue
            ttft = [s.ttft_ms for s in chosen]
            total = [s.total_ms for s in chosen]
            row = (
                statistics.median(ttft),
                percentile(ttft, 0.99),
                statistics.median(total),
                percentile(total, 0.99),
            )
            rows[(streams, path)] = row
            tokens = statistics.median(s.tokens for s in chosen)
            print(
                f"{streams:>7} {path:>8} {len(chosen):>4} {row[0]:>9.1f} {row[1]:>9.1f}"
                f" {row[2]:>10.1f} {row[3]:>10.1f} {tokens:>4.0f}"
            )
        for path in paths[1:]:
            if (streams, path) in rows and (streams, "direct") in rows:
                c, d = rows[(streams, path)], rows[(streams, "direct")]
                print(
                    f"{streams:>7} {'+' + path:>8} {'':>4} {c[0] - d[0]:>+9.1f}"
                    f" {c[1] - d[1]:>+9.1f} {c[2] - d[2]:>+10.1f} {c[3] - d[3]:>+10.1f}"
                )
    # Hops for the 1-stream gateway-path requests.
    via = [s for s in samples if s.streams == 1 and s.path == "gateway" and s.request_id]
    legs: dict[str, list[float]] = {}

    def leg(name: str, value: float | None) -> None:
        if value is not None:
            legs.setdefault(name, []).append(value)

    for s in via:
        steps = hops.records.get(s.request_id, {})
        need = ("created", "request_log", "assigned", "assigned_log", "work_sent", "chunk0")
        if not all(k in steps for k in need):
            continue
        leg("client send -> gateway created_at", steps["created"] - s.sent_wall_ms)
        if "decided" in steps:  # billing decided: the request waited for its reservation
            leg("created_at -> billing decided_at", steps["decided"] - steps["created"])
            leg("decided_at -> reservation sent (in txn)", steps["held_log"] - steps["decided"])
            leg("reservation sent -> scheduler assigned_at", steps["assigned"] - steps["held_log"])
        else:  # admitted against a grant: placed straight from inference.requests
            leg("created_at -> request sent (granted)", steps["request_log"] - steps["created"])
            leg("request sent -> scheduler assigned_at", steps["assigned"] - steps["request_log"])
        leg("assigned_at -> assignment sent", steps["assigned_log"] - steps["assigned"])
        leg("assignment -> work item sent (sealed)", steps["work_sent"] - steps["assigned_log"])
        leg("work sent -> first chunk produced", steps["chunk0"] - steps["work_sent"])
        leg("  of which: worker receive -> first chunk", steps.get("ttfc_worker"))
        # The worker forwards no role-only opening chunk: the first sealed chunk is the first
        # content, so this is its hop to the client (gateway fetch, open, SSE).
        leg("first chunk -> client first content", s.first_wall_ms - steps["chunk0"])
    granted = sum(1 for s in via if "decided" not in hops.records.get(s.request_id, {"decided": 0}))
    print(f"\n1-stream gateway-path requests admitted against a grant: {granted} of {len(via)}")
    if legs:
        print("per hop, 1 stream, gateway path (ms; each hop over the requests that took it):")
        print(f"{'hop':<44} {'p50':>7} {'p99':>7}")
        for name, values in legs.items():
            p50, p99 = statistics.median(values), percentile(values, 0.99)
            print(f"{name:<44} {p50:>7.1f} {p99:>7.1f} n={len(values)}")


def results(samples: list[Sample], extra: dict) -> list[dict]:
    """One machine-readable line per (path, streams): what the path adds over the engine."""

    def of(path: str, streams: int) -> list[Sample]:
        return [s for s in samples if s.path == path and s.streams == streams]

    def pct_256(path: str) -> float | None:
        mine, direct = of(path, 0), of("direct", 0)
        if not mine or not direct:
            return None
        base = statistics.median(s.total_ms for s in direct)
        return round((statistics.median(s.total_ms for s in mine) - base) / base * 100, 1)

    out = []
    levels = sorted({s.streams for s in samples if s.streams > 0})
    for path in ("client", "gateway"):
        for streams in levels:
            mine, direct = of(path, streams), of("direct", streams)
            if not mine or not direct:
                continue
            ttft, base = [s.ttft_ms for s in mine], [s.ttft_ms for s in direct]
            out.append(
                {
                    "bench": "e2e_overhead",
                    "path": path,
                    "streams": streams,
                    "added_ttft_p50_ms": round(
                        statistics.median(ttft) - statistics.median(base), 1
                    ),
                    "added_ttft_p99_ms": round(percentile(ttft, 0.99) - percentile(base, 0.99), 1),
                    "added_total_pct_256": pct_256(path) if streams == 1 else None,
                    "n": len(mine),
                    "direct_ttft_p50_ms": round(statistics.median(base), 1),
                    **extra,
                }
            )
    return out


# One API key sends everything: the gateway's per-key rate limit (5/s) is lifted.
UNLIMITED_API = {
    "COCOON_API": json.dumps({"rate_limit_per_second": 1e6, "rate_limit_burst": 10**6})
}


def private_network_environment(
    name: str, extra: dict[str, str]
) -> tuple[Path, broker.BrokerLayout, str]:
    """A private broker (jars from the project cache; secured as production's, so this process
    connects as its admin) and a private cache, set in this process's environment for the
    network a bench starts; `extra` adds settings. Returns (its home, the broker's layout, the
    bootstrap). Import `cocoon.network.local` after this: it reads the environment."""
    home = Path(tempfile.mkdtemp(prefix=f"cocoon-bench-{name}-"))
    layout = broker.BrokerLayout(home=home / "kafka", port=free_port(), controller_port=free_port())
    bootstrap = broker.start(layout, echo=lambda _m: None)
    os.environ.update(layout.admin_security().env())
    os.environ.update(
        {
            "COCOON_KAFKA_BOOTSTRAP": bootstrap,
            "COCOON_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:6]}.",
            "COCOON_CACHE_DIR": str(home / "cache"),
            **extra,
        }
    )
    return home, layout, bootstrap


def chat_network(workers: int):
    """The local network with chat workers only (the engines are the baseline: an embedding
    engine would answer a chat request 404) on free ports."""
    from cocoon.network import local

    return local.LocalNetwork(
        workers=workers,
        embedding_workers=0,
        http_port=free_port(),
        grpc_port=free_port(),
        echo=lambda _m: None,
    )


def start_paced_engine(
    *, port: int | None = None, pacing: tuple[str, ...] = (), **_: object
) -> EngineProcess:
    """bench/paced_engine.py as the worker's engine (same interface as start_engine);
    `pacing`: its options (`--ttft-ms`, `--token-ms`, `--slots`)."""
    chosen = port or free_port()
    log_path = Path(tempfile.mkdtemp(prefix="paced-engine-")) / "engine.log"
    script = Path(__file__).with_name("paced_engine.py")
    argv = [sys.executable, str(script), "--port", str(chosen), "--model", SMOLLM2_MODEL]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*argv, *pacing],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    engine = EngineProcess(f"http://127.0.0.1:{chosen}/v1", SMOLLM2_MODEL, process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{engine.base_url}/models", timeout=1).status_code == 200:
                return engine
        except httpx.HTTPError:
            time.sleep(0.05)
    engine.stop()
    raise RuntimeError(f"the paced engine did not start; log {log_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds1", type=int, default=60, help="1-stream pairs")
    parser.add_argument("--rounds8", type=int, default=6, help="rounds at each streams level > 1")
    parser.add_argument(
        "--paths", type=lambda v: v.split(","), default=["gateway", "client"],
        help="gateway,client (the engine itself is always measured, as the baseline)",
    )  # fmt: skip
    parser.add_argument(
        "--streams", type=lambda v: [int(n) for n in v.split(",")], default=[1, 8],
        help="concurrency levels, e.g. 1,8,32,128",
    )  # fmt: skip
    parser.add_argument("--long-rounds", type=int, default=5, help="rounds of long answers")
    parser.add_argument("--long-tokens", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--engine",
        choices=("llama", "paced"),
        default="llama",
        help="paced: bench/paced_engine.py instead of llama.cpp (sleeps, leaves the CPU free)",
    )
    parser.add_argument(
        "--no-grants",
        action="store_true",
        help="the gateway asks for no admission grants: every request waits for billing",
    )
    parser.add_argument(
        "--engine-threads",
        type=int,
        default=1,
        help="llama.cpp threads (0 = the network's default); see docs/performance.md",
    )
    parser.add_argument(
        "--baseline",
        metavar="COMMIT",
        help="first measure the services as at this commit (from git), then the work tree's",
    )
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the network on SIGTERM too
    lines = []
    if args.baseline:
        # The services as they were at that commit, then as they are now, one after the other.
        lines += measure_network(args, args.baseline, baseline_pythonpath(args.baseline))
    lines += measure_network(args, "work tree" if args.baseline else None, None)
    for line in lines:
        print(json.dumps(line))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(network, layout: broker.BrokerLayout, seconds: float = 10.0) -> dict[str, float]:
    """% of a core the network takes with no request in flight, the services' processes
    (engines excluded) and the broker apart: the floor every request's hops share the CPUs
    with."""
    pids = {
        "services": [child.process.pid for child in network.supervisor.children if child.alive],
        "broker": [int(layout.pid_file.read_text().strip())],
    }

    def sample() -> dict[str, float]:
        return {name: sum(cpu_seconds(pid) for pid in group) for name, group in pids.items()}

    before = sample()
    time.sleep(seconds)
    after = sample()
    return {name: round((after[name] - before[name]) / seconds * 100, 1) for name in pids}


def baseline_pythonpath(commit: str) -> str:
    """A PYTHONPATH that makes the services' processes run their code (and schemas) as at
    `commit`, read from git: the regular packages there shadow the work tree's editable
    installs. The bench process itself (its HTTP clients, the client proxy) stays current."""
    root = Path(tempfile.mkdtemp(prefix=f"cocoon-bench-{commit}-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "services", "schemas"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return os.pathsep.join(str(src) for src in sorted((root / "services").glob("*/src")))


def measure_network(args: argparse.Namespace, code: str | None, pythonpath: str | None) -> list:
    """Start a network (on `pythonpath`'s code if given), measure, stop; the result lines."""
    print(f"\n== services: {code or 'work tree'}")
    saved = dict(os.environ)
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    home, layout, bootstrap = private_network_environment("e2e", UNLIMITED_API)
    if args.no_grants:
        os.environ["COCOON_GRANT_ASK_REQUESTS"] = "0"
    from cocoon.network import local  # after the environment is set

    if args.engine == "paced":
        local.start_engine = start_paced_engine
    elif args.engine_threads:
        local.start_engine = functools.partial(start_engine, n_threads=args.engine_threads)
    network = chat_network(args.workers)
    try:
        started = time.monotonic()
        network.start(ready_timeout_s=300)
        network.wait_for_workers(ready_timeout_s=300)
        print(f"network up in {time.monotonic() - started:.1f} s; broker {bootstrap}")
        idle = idle_cpu(network, layout)
        print(f"idle network: {idle} % of a core over 10 s; load average {os.getloadavg()}")
        began = time.monotonic()
        samples, hops, failed = asyncio.run(
            run(
                args,
                network.gateway_url,
                [engine.base_url for engine in network.engines],
                network.api_key,
                bootstrap,
            )
        )
        load_after = os.getloadavg()
        print(f"measured in {time.monotonic() - began:.0f} s; load average: {load_after}")
        report(samples, hops)
        extra = {
            "engine": args.engine,
            "max_tokens": args.max_tokens,
            "workers": args.workers,
            "failed": failed,
            "load_average": round(load_after[0], 1),
            "idle_cpu_pct": idle,
            **({"code": code} if code else {}),
        }
        return results(samples, extra)
    finally:
        network.stop()
        broker.stop(layout)
        shutil.rmtree(home, ignore_errors=True)
        os.environ.clear()
        os.environ.update(saved)


if __name__ == "__main__":
    main()
