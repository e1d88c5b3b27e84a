"""The whole network, as `cocoon up` runs it, on the session's broker with its own topics."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from support.client_proxy import Proxy

from cocoon.network.demo import DEMO_ACCOUNT
from cocoon.network.engine_process import free_port
from cocoon.network.local import DEMO_BALANCE_NANOTON, LocalNetwork

POOR_ACCOUNT = "poor"
POOR_BALANCE_NANOTON = 1_000  # far less than any hold
E2E_PAYOUT_THRESHOLD_NANOTON = 1


@pytest.fixture(scope="package")
def network(kafka_bootstrap, tmp_path_factory) -> Iterator[LocalNetwork]:
    env = {
        "COCOON_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "COCOON_TOPIC_PREFIX": f"e2e{uuid.uuid4().hex[:6]}.",
        "COCOON_CACHE_DIR": str(tmp_path_factory.mktemp("cocoon-cache")),
        # Where `cocoon up` writes the development client configuration (tests/e2e/
        # test_client_path.py) and the client keeps its receipts.
        "COCOON_CONFIG_DIR": str(tmp_path_factory.mktemp("cocoon-client-config")),
        # Short, explicit waits so the failure tests (test_failures.py) stay quick and can
        # assert against the configured values.
        "COCOON_NO_WORKER_WAIT_SECONDS": "3",
        "COCOON_OUTCOME_GRACE_SECONDS": "2",
        # On a loaded 2-core machine the CPU engine can take more than the default 10 s to a
        # first token; a lease that expires then re-places healthy requests. Lost workers are
        # still noticed after the heartbeat silence (6 s), which is what the tests exercise.
        "COCOON_LEASE_SECONDS": "30",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    net = LocalNetwork(
        workers=2,
        http_port=free_port(),
        grpc_port=free_port(),
        # A second gateway instance (tests/e2e/test_failures.py kills it mid-answer).
        more_gateway_ports=(free_port(),),
        echo=lambda _msg: None,
        grants={DEMO_ACCOUNT: DEMO_BALANCE_NANOTON, POOR_ACCOUNT: POOR_BALANCE_NANOTON},
        # As `cocoon up --ton`: billing pays workers on the emulated chain, every credit at
        # once (tests/e2e/test_worker_join.py follows a self-joined worker's payouts).
        ton=True,
        ton_port=free_port(),
        payout_threshold=E2E_PAYOUT_THRESHOLD_NANOTON,
    )
    try:
        net.start(ready_timeout_s=120)
        # start() returns once the first worker is attested; the tests expect every worker.
        net.wait_for_workers(ready_timeout_s=120)
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


def pytest_collection_modifyitems(items) -> None:
    """The first test of the package also starts the network (broker over TLS + SCRAM, the
    catalog's topics, users and ACLs, three registry commands, two engines): on the shared
    2-core machine at load average 30 that alone took over the suite's 300 s default."""
    for item in items:
        if "tests/e2e/" in str(item.path) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(900))


@dataclass(frozen=True)
class Api:
    """One way into the network's OpenAI API: `gateway` (the gateway seals the request) or
    `client` (the local proxy, `cocoon client serve`, seals it; the gateway relays ciphertext)."""

    sealed_by: str
    base_url: str  # ends in /v1
    api_key: str

    def sdk(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, **kwargs)

    def async_sdk(self, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, **kwargs)

    def post(self, route: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            f"{self.base_url}{route}",
            headers={"Authorization": f"Bearer {self.api_key}"},
            json=body,
            timeout=120,
        )


@pytest.fixture(scope="module")
def client_proxy(network: LocalNetwork) -> Iterator[Proxy]:
    with Proxy(network) as running:
        yield running


@pytest.fixture(params=["gateway", "client"])
def api(request: pytest.FixtureRequest, network: LocalNetwork) -> Api:
    """Each request form is served on both paths: what the engine cannot take is rewritten on
    the worker, inside the enclave, where a client-sealed body is opened too."""
    if request.param == "gateway":
        return Api("gateway", f"{network.gateway_url}/v1", network.api_key)
    proxy = request.getfixturevalue("client_proxy")
    return Api("client", proxy.url, network.api_key)
