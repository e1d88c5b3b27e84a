"""Session fixtures for the real inference engine (llama.cpp's OpenAI server, SmolLM2-135M, CPU).

Registered for every test through `pytest_plugins` in tests/conftest.py:

    def test_something(engine_url):        # "http://127.0.0.1:<port>/v1", OpenAI base URL
        ...

Fixtures: `engine_process` (the EngineProcess: pid, log), `engine_url`, `engine_model`;
`embedding_engine` (the embedding engine, all-MiniLM-L6-v2 in numpy), started on first use.

One engine serves the whole session (it starts in about a second; it runs one request at a
time, so tests that share it see each other's load, never each other's answers).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cocoon.network.engine_process import (
    SMOLLM2_MODEL,
    EngineProcess,
    running_engine,
    start_embedding_engine,
)


@pytest.fixture(scope="session")
def engine_process() -> Iterator[EngineProcess]:
    """The running engine process (pid, log path, base URL)."""
    with running_engine() as process:
        yield process


@pytest.fixture(scope="session")
def engine_url(engine_process: EngineProcess) -> str:
    """OpenAI base URL of the session's engine, ending in /v1."""
    return engine_process.base_url


@pytest.fixture(scope="session")
def engine_model() -> str:
    """The model id the engine serves (what requests put in `model`)."""
    return SMOLLM2_MODEL


@pytest.fixture(scope="session")
def embedding_engine() -> Iterator[EngineProcess]:
    """The embedding engine's process (`base_url`, `model`: all-minilm-l6-v2)."""
    process = start_embedding_engine()
    try:
        yield process
    finally:
        process.stop()
