"""Shared fixtures: one real Kafka broker for the whole session, unique names per test."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from support.pki import TestCA, write_broker_tls

from cocoon.core.bus.principals import Credentials
from cocoon.core.kafka.broker import BrokerTls, free_port_pair
from cocoon.core.kafka.provider import ProvidedBroker, provide_broker, selected_provider
from cocoon.core.paths import cache_dir

pytest_plugins = ["support.engine"]  # engine / engine_url: one real llama.cpp server


@dataclass(frozen=True)
class KafkaTls:
    """The session broker's mTLS listener: client certificates must chain to `ca`."""

    bootstrap: str
    ca: TestCA


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def _session_broker() -> Iterator[tuple[ProvidedBroker, KafkaTls | None]]:
    home = cache_dir() / "kafka" / f"test-{uuid.uuid4().hex[:8]}"
    saved = dict(os.environ)
    try:
        ca = TestCA()
        keystore, truststore = write_broker_tls(ca, home / "tls")
        tls = BrokerTls(_free_port(), keystore, truststore)
        local = selected_provider() == "local"  # only the local broker gets the TLS listener
        with provide_broker(home, free_port_pair(), tls=tls) as provided:
            # The tests' own clients (and the services they run in-process) connect as the
            # admin principal; tests of the principals build their own settings.
            os.environ.update(provided.admin.env(provided.admin_password_file))
            yield provided, KafkaTls(tls.bootstrap, ca) if local else None
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(_session_broker) -> str:
    """Bootstrap address of a real broker, chosen by the same setting as `cocoon up`. This
    process's COCOON_KAFKA_* settings are its admin principal's."""
    return _session_broker[0].bootstrap


@pytest.fixture(scope="session")
def kafka_admin(_session_broker) -> ProvidedBroker:
    """The session broker with its admin principal (a super user): for applying ACLs and users
    and for clients built by hand (`kafka_admin.admin.aiokafka()`)."""
    return _session_broker[0]


@pytest.fixture(scope="session")
def kafka_tls(_session_broker) -> KafkaTls:
    """The same broker's second listener: TLS with client certificates required (production's
    listener shape). Only the local broker has it."""
    if _session_broker[1] is None:
        pytest.skip(f"the {selected_provider()} Kafka provider has no mTLS listener")
    return _session_broker[1]


@pytest.fixture(scope="session")
def kafka_credentials(_session_broker, tmp_path_factory) -> Credentials | None:
    """Per-service principals for processes a test starts: `kafka_credentials.env("billing",
    prefix)` gives the COCOON_KAFKA_* settings of `cocoon-billing`, with the catalog's ACLs
    applied for that topic prefix. None on a broker without SASL (they inherit the admin's)."""
    return Credentials.for_admin(
        _session_broker[0].bootstrap, tmp_path_factory.mktemp("kafka-users")
    )


@pytest.fixture
def unique_name(request) -> callable:
    """Make topic / group / transactional ids unique to this test run."""
    suffix = uuid.uuid4().hex[:8]

    def make(prefix: str) -> str:
        return f"{prefix}.{request.node.name[:40]}.{suffix}".replace("[", "_").replace("]", "_")

    return make
