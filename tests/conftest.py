"""Shared fixtures: one real Kafka broker for the whole session, unique names per test."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest

from cocoon.core.kafka.broker import free_port_pair
from cocoon.core.kafka.provider import provide_broker
from cocoon.core.paths import cache_dir

pytest_plugins = ["support.engine"]  # engine / engine_url: one real llama.cpp server


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real broker, chosen by the same setting as `cocoon up`."""
    home = cache_dir() / "kafka" / f"test-{uuid.uuid4().hex[:8]}"
    try:
        with provide_broker(home, free_port_pair()) as bootstrap:
            yield bootstrap
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def unique_name(request) -> callable:
    """Make topic / group / transactional ids unique to this test run."""
    suffix = uuid.uuid4().hex[:8]

    def make(prefix: str) -> str:
        return f"{prefix}.{request.node.name[:40]}.{suffix}".replace("[", "_").replace("]", "_")

    return make
