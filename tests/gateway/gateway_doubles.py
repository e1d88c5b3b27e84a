"""ScriptedBackend: an in-process test double at the InferenceBackend seam.

It stands in for the Kafka pipeline (billing, scheduler, worker) so the HTTP surface can be
tested alone; the real pipeline replaces it. Behaviour is chosen per model by a plan: a list
of steps, each a `ChatChunk`/`Usage` to yield, an exception to raise, or a float to sleep.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI

from cocoon.gateway.api import (
    ChatChunk,
    Embeddings,
    InferenceRequest,
    InsufficientFunds,
    ModelInfo,
    NoWorkerAvailable,
    UnknownModel,
    UpstreamTimeout,
    Usage,
    WorkerLost,
)

Step = ChatChunk | Embeddings | Usage | BaseException | float
Plan = Callable[[InferenceRequest], list[Step]]


def embedded(request: InferenceRequest, *, per_chunk: int = 2) -> list[Step]:
    """An embeddings answer as a worker sends it: runs of embedding objects, then the usage.
    The vectors are placeholders (the worker-proxy and e2e tests check real ones)."""
    given = request.body["input"]
    count = 1 if isinstance(given, str) or isinstance(given[0], int) else len(given)
    data = [{"object": "embedding", "index": i, "embedding": [0.5, float(i)]} for i in range(count)]
    runs: list[Step] = [
        Embeddings(tuple(data[i : i + per_chunk])) for i in range(0, count, per_chunk)
    ]
    return [*runs, Usage(prompt_tokens=3 * count, completion_tokens=0)]


def reply(text: str, *, prompt_tokens: int = 7, pieces: int = 3) -> list[Step]:
    """A normal answer: `text` in `pieces` chunks, finish_reason stop, then usage."""
    size = max(1, -(-len(text) // pieces))
    parts = [text[i : i + size] for i in range(0, len(text), size)]
    steps: list[Step] = [ChatChunk(text=p) for p in parts[:-1]]
    steps.append(ChatChunk(text=parts[-1], finish_reason="stop"))
    steps.append(Usage(prompt_tokens=prompt_tokens, completion_tokens=len(parts)))
    return steps


@dataclass
class ScriptedBackend:
    plans: dict[str, Plan] = field(default_factory=dict)
    listed: list[ModelInfo] = field(default_factory=list)
    submitted: list[tuple[str, InferenceRequest]] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    cancel_seen: asyncio.Event | None = None

    async def models(self) -> list[ModelInfo]:
        return list(self.listed)

    async def submit(
        self, account_id: str, request: InferenceRequest
    ) -> AsyncIterator[ChatChunk | Embeddings | Usage]:
        self.submitted.append((account_id, request))
        plan = self.plans.get(request.model)
        if plan is None:
            raise UnknownModel(request.model)
        done = False
        try:
            for step in plan(request):
                if isinstance(step, float):
                    await asyncio.sleep(step)
                elif isinstance(step, BaseException):
                    raise step
                else:
                    yield step
            done = True
        finally:
            (self.completed if done else self.cancelled).append(request.request_id)


MODEL = "smollm2-135m"
EMBEDDER = "minilm"


def default_backend() -> ScriptedBackend:
    return ScriptedBackend(
        plans={
            MODEL: lambda req: reply("Hello from the enclave!"),
            "poor": lambda req: [InsufficientFunds(1234, required_nanoton=5000)],
            "busy": lambda req: [NoWorkerAvailable("busy")],
            "pricey": lambda req: [NoWorkerAvailable("pricey", min_coefficient=2500)],
            "slow": lambda req: [30.0],
            "late": lambda req: [UpstreamTimeout()],
            "silent": lambda req: [],
            "dies": lambda req: [ChatChunk(text="Hel"), ChatChunk(text="lo"), WorkerLost()],
            "crashes": lambda req: [ChatChunk(text="x"), RuntimeError("bug in the backend")],
            # One chunk, then silence: a disconnect must be noticed without waiting for a write.
            "trickle": lambda req: [ChatChunk(text="a"), 2.0, ChatChunk(text="b")],
            # Engines that repeat a finish_reason, or end without one.
            "repeats-finish": lambda req: [
                ChatChunk(text="a", finish_reason="stop"),
                ChatChunk(text="", finish_reason="stop"),
                Usage(prompt_tokens=1, completion_tokens=1),
            ],
            "no-finish": lambda req: [
                ChatChunk(text="a"),
                ChatChunk(text="b"),
                Usage(prompt_tokens=1, completion_tokens=2),
            ],
            "stall": lambda req: [ChatChunk(text="tick"), 30.0, ChatChunk(text="late")],
            EMBEDDER: embedded,
            "embeds-a-gap": lambda req: [
                Embeddings(({"object": "embedding", "index": 1, "embedding": [0.0]},)),
                Usage(prompt_tokens=3, completion_tokens=0),
            ],
        },
        listed=[
            ModelInfo(MODEL, attested_workers=2, min_coefficient=1000),
            ModelInfo("nobody-attested", attested_workers=0),
        ],
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run `app` with uvicorn on a free loopback port in a thread; yield its base URL."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
