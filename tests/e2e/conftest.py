"""The whole network, as `cocoon up` runs it, on the session's broker with its own topics."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from cocoon.network.demo import DEMO_ACCOUNT
from cocoon.network.engine_process import free_port
from cocoon.network.local import DEMO_BALANCE_NANOTON, LocalNetwork

POOR_ACCOUNT = "poor"
POOR_BALANCE_NANOTON = 1_000  # far less than any hold


@pytest.fixture(scope="package")
def network(kafka_bootstrap, tmp_path_factory) -> Iterator[LocalNetwork]:
    env = {
        "COCOON_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "COCOON_TOPIC_PREFIX": f"e2e{uuid.uuid4().hex[:6]}.",
        "COCOON_CACHE_DIR": str(tmp_path_factory.mktemp("cocoon-cache")),
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    net = LocalNetwork(
        workers=2,
        http_port=free_port(),
        echo=lambda _msg: None,
        grants={DEMO_ACCOUNT: DEMO_BALANCE_NANOTON, POOR_ACCOUNT: POOR_BALANCE_NANOTON},
    )
    try:
        net.start(ready_timeout_s=120)
        yield net
    finally:
        net.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def poor_account() -> tuple[str, int]:
    """An account funded with far less than any hold: (account id, balance in nanoTON)."""
    return POOR_ACCOUNT, POOR_BALANCE_NANOTON
