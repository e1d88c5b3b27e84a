"""Fixtures for the HTTP surface: a key store, a scripted backend, an app, a live server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from fastapi import FastAPI
from gateway_doubles import ScriptedBackend, reply

from cocoon.gateway.api import (
    ApiSettings,
    ChatChunk,
    InsufficientFunds,
    KeyStore,
    ModelInfo,
    NoWorkerAvailable,
    UpstreamTimeout,
    WorkerLost,
    create_app,
)

MODEL = "smollm2-135m"


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
            "stall": lambda req: [ChatChunk(text="tick"), 30.0, ChatChunk(text="late")],
        },
        listed=[
            ModelInfo(MODEL, attested_workers=2, min_coefficient=1000),
            ModelInfo("nobody-attested", attested_workers=0),
        ],
    )


@pytest.fixture
def backend() -> ScriptedBackend:
    return default_backend()


@pytest.fixture
def keys() -> KeyStore:
    return KeyStore()


@pytest.fixture
def api_key(keys: KeyStore) -> str:
    return keys.create("acct-1", name="test")


@pytest.fixture
def app(backend: ScriptedBackend, keys: KeyStore) -> FastAPI:
    return create_app(backend, keys, ApiSettings(rate_limit_per_second=1000, rate_limit_burst=1000))


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
