"""Time per generated token of the local engine (SmolLM2-135M on llama-cpp-python, CPU) with and
without log-probabilities: the same chat request, 32 tokens at temperature 0, five rounds of
each variant interleaved, median reported (docs/performance.md, "Log-probabilities").

    .venv/bin/python bench/engine_logprobs.py
"""

from __future__ import annotations

import statistics
import time

import httpx

from cocoon.network.engine_process import SMOLLM2_MODEL, running_engine

VARIANTS = {
    "plain": {},
    "logprobs": {"logprobs": True},
    "top 5": {"logprobs": True, "top_logprobs": 5},
}


def main() -> None:
    base = {
        "model": SMOLLM2_MODEL,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 32,
        "temperature": 0,
    }
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with running_engine() as engine, httpx.Client(base_url=engine.base_url, timeout=300) as http:
        http.post("/chat/completions", json=base)  # load the weights and the prompt cache
        for _ in range(5):
            for name, extra in VARIANTS.items():
                started = time.perf_counter()
                answer = http.post("/chat/completions", json={**base, **extra}).json()
                tokens = answer["usage"]["completion_tokens"]
                times[name].append((time.perf_counter() - started) / tokens * 1000)
    for name, ms in times.items():
        runs = ", ".join(f"{m:.1f}" for m in ms)
        print(f"{name:9s} median {statistics.median(ms):6.1f} ms/token  (runs: {runs})")


if __name__ == "__main__":
    main()
