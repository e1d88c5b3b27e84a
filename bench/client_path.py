"""The client-sealed path against the gateway-sealed path and the engine itself, in one run.

Starts the network on one machine (`LocalNetwork`: a private broker, the five services, one
worker), runs the client proxy (`cocoon client serve`) in this process, and sends the SAME
streamed chat request by the same httpx code to the engine directly, to the gateway's own path,
and to the client proxy, in random order per round:

    .venv/bin/python bench/client_path.py [--rounds 40] [--max-tokens 16] [--engine paced|llama]

Prints one JSON line per path (TTFT and total, p50/p90/p99 in ms) and one for the client's
verification cost: `cold` is a full verification of one worker (dcap-qvl + policy, its inputs
already fetched), `warm` the cached result the common request uses. The paced engine
(bench/paced_engine.py) sleeps between tokens instead of computing, so the CPU the paths use is
what differs on this 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from e2e_overhead import (
    body,
    chat_network,
    one_request,
    percentile,
    private_network_environment,
    start_paced_engine,
)

from cocoon.core.kafka import broker
from cocoon.network.engine_process import SMOLLM2_MODEL


def summary(path: str, samples: list, extra: dict | None = None) -> dict:
    ttft = [s.ttft_ms for s in samples]
    total = [s.total_ms for s in samples]
    return {
        "bench": "client_path",
        "path": path,
        "n": len(samples),
        "ttft_ms": {
            q: round(percentile(ttft, v), 1) for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        },
        "total_ms": {
            q: round(percentile(total, v), 1)
            for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        },
        "tokens": round(statistics.mean(s.tokens for s in samples), 1),
        **(extra or {}),
    }


def time_phases(session) -> dict[str, list[float]]:
    """Wrap the session's steps: candidates (fetch + verify, usually cached) and the sealed
    POST up to its first chunk (the gateway's relay, the worker, the engine)."""
    phases: dict[str, list[float]] = {"candidates_ms": [], "post_to_first_chunk_ms": []}
    candidates, send = session.candidates, session.api.send

    async def timed_candidates(*a, **kw):
        started = time.perf_counter()
        try:
            return await candidates(*a, **kw)
        finally:
            phases["candidates_ms"].append((time.perf_counter() - started) * 1000)

    async def timed_send(*a, **kw):
        started, first = time.perf_counter(), True
        async for chunk in send(*a, **kw):
            if first:
                phases["post_to_first_chunk_ms"].append((time.perf_counter() - started) * 1000)
                first = False
            yield chunk

    session.candidates, session.api.send = timed_candidates, timed_send

    # Inside `candidates`: the gateway look-ups (cached), the registry's folding (an Ed25519
    # verify per entry) and each worker's check (dcap-qvl, cached by the verifier).
    import cocoon.client.session as session_module

    def timed_sync(name: str, fn):
        phases[name] = []

        def timed(*a, **kw):
            started = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases[name].append((time.perf_counter() - started) * 1000)

        return timed

    def timed_async(name: str, fn):
        return timed_async_phase(phases, name, fn)

    api = session.api
    api.registry = timed_async("api_registry_ms", api.registry)
    api.workers = timed_async("api_workers_ms", api.workers)
    api.collateral = timed_async("api_collateral_ms", api.collateral)
    session.verifier.verify = timed_sync("verifier_verify_ms", session.verifier.verify)
    view = session_module.RegistryView
    view_from_entries = timed_sync("registry_fold_ms", view.from_entries)
    session_module.RegistryView = type("TimedView", (), {"from_entries": view_from_entries})
    session_module.seal = timed_sync("seal_ms", session_module.seal)
    return phases


def timed_async_phase(phases: dict[str, list[float]], name: str, fn):
    phases[name] = []

    async def timed(*a, **kw):
        started = time.perf_counter()
        try:
            return await fn(*a, **kw)
        finally:
            phases[name].append((time.perf_counter() - started) * 1000)

    return timed


def phase_summary(phases: dict[str, list[float]], warmup: int) -> dict:
    out: dict = {"bench": "client_path_phases"}
    for name, values in phases.items():
        kept = values[warmup:] or values
        out[name] = {"p50": round(percentile(kept, 0.5), 2), "p90": round(percentile(kept, 0.9), 2)}
    return out


async def verification_cost(session, rounds: int) -> dict:
    from cocoon.client.registry import RegistryView
    from cocoon.client.verify import WorkerVerifier

    registry = RegistryView.from_entries(
        await session.api.registry(), session.config.registry_public_key
    )
    [offered] = (await session.api.workers(SMOLLM2_MODEL))[:1]
    cold, warm = [], []
    for _ in range(rounds):
        session.verifier = WorkerVerifier(session.config)  # nothing cached
        started = time.perf_counter()
        check = await session._verify(offered, registry, SMOLLM2_MODEL)
        cold.append((time.perf_counter() - started) * 1000)
        assert check.accepted, check.reason
        started = time.perf_counter()
        await session._verify(offered, registry, SMOLLM2_MODEL)
        warm.append((time.perf_counter() - started) * 1000)
    return {
        "bench": "client_verification",
        "n": rounds,
        "cold_ms": {"p50": round(percentile(cold, 0.5), 3), "p90": round(percentile(cold, 0.9), 3)},
        "warm_ms": {"p50": round(percentile(warm, 0.5), 3), "p90": round(percentile(warm, 0.9), 3)},
    }


async def run(args: argparse.Namespace, network) -> None:
    from cocoon.client.config import load_config
    from cocoon.client.server import ProxyServer
    from cocoon.client.session import SealedSession
    from cocoon.client.transport import SealingTransport

    session = SealedSession(
        network.gateway_url, network.api_key, load_config(gateway=network.gateway_url)
    )
    phases = time_phases(session)
    transport = SealingTransport(session)
    # The proxy's own part: from its handler's start to the first piece it can answer with.
    transport.handle_async_request = timed_async_phase(
        phases, "proxy_handler_to_first_piece_ms", transport.handle_async_request
    )
    proxy = ProxyServer(transport, "127.0.0.1", 0)
    await proxy.start()
    paths = {
        "engine": (f"{network.engines[0].base_url}/chat/completions", {}),
        "gateway-sealed": (
            f"{network.gateway_url}/v1/chat/completions",
            {"Authorization": f"Bearer {network.api_key}"},
        ),
        "client-sealed": (f"http://127.0.0.1:{proxy.port}/v1/chat/completions", {}),
    }
    samples: dict[str, list] = {p: [] for p in paths}
    rng = random.Random(args.seed)
    payload = body(args.max_tokens)
    async with httpx.AsyncClient(timeout=120) as client:
        for round_ in range(args.warmup + args.rounds):
            order = list(paths)
            rng.shuffle(order)
            for name in order:
                url, headers = paths[name]
                sample = await one_request(client, url, headers, payload, name, 1)
                if round_ >= args.warmup:
                    samples[name].append(sample)
    for name, got in samples.items():
        print(
            json.dumps(summary(name, got, {"engine": args.engine, "max_tokens": args.max_tokens}))
        )
    print(json.dumps(phase_summary(phases, args.warmup)))
    print(json.dumps(await verification_cost(session, args.verify_rounds)))
    await proxy.stop()
    await session.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--verify-rounds", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engine", choices=("llama", "paced"), default="paced")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    home, layout, _ = private_network_environment("client", {})
    os.environ["COCOON_CONFIG_DIR"] = str(home / "client-config")
    from cocoon.network import local  # after the environment is set

    if args.engine == "paced":
        local.start_engine = start_paced_engine
    network = chat_network(1)
    try:
        network.start(ready_timeout_s=180)
        print(f"# load average before: {os.getloadavg()}", file=sys.stderr)
        asyncio.run(run(args, network))
        print(f"# load average after: {os.getloadavg()}", file=sys.stderr)
    finally:
        network.stop()
        broker.stop(layout)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
