"""Attestation fixtures: real-quote data files, one simulated TDX per session, claims."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cocoon.attestation.claims import Claims, Freshness
from cocoon.attestation.simtdx import SimTdx
from cocoon.attestation.verdicts import ServiceKey

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data() -> Path:
    return DATA


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimTdx:
    return SimTdx.load_or_create(tmp_path_factory.mktemp("simtdx"))


# Per module, for the service tests: a simulated TDX CA and an attestation service key.
@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("simtdx")
    SimTdx.load_or_create(d)
    return d


@pytest.fixture(scope="module")
def service_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("attestation-key") / "service-key.pem"
    ServiceKey.load(path, create=True)
    return path


@pytest.fixture(scope="session")
def now() -> int:
    return int(time.time())


@pytest.fixture
def make_claims(now: int) -> Callable[..., Claims]:
    def make(
        *, nonce: bytes | None = None, timestamp: int | None = None, model: str = "qwen3-0.6b"
    ) -> Claims:
        fresh = (
            Freshness(nonce=nonce) if nonce is not None else Freshness(timestamp=timestamp or now)
        )
        return Claims(os.urandom(32), os.urandom(32), os.urandom(1216), model, fresh)

    return make
