"""Client fixtures: one simulated TDX CA per session (the operator's side of the tests)."""

from __future__ import annotations

import pytest

from cocoon.attestation.simtdx import SimTdx


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimTdx:
    return SimTdx.load_or_create(tmp_path_factory.mktemp("client-simtdx"))
