"""Which TEE a worker may start with: an installed quote device, and the simulated one only in
development unless explicitly allowed."""

from __future__ import annotations

import pytest

from cocoon.core.runtime.settings import SettingsError, load_settings
from cocoon.worker_proxy.service import Settings


@pytest.fixture(autouse=True)
def worker_env(monkeypatch):
    monkeypatch.setenv("COCOON_WORKER_ID", "worker-0")
    monkeypatch.setenv("COCOON_MODEL", "m")
    for name in ("COCOON_TEE", "COCOON_ENVIRONMENT", "COCOON_ALLOW_SIMULATED_TEE"):
        monkeypatch.delenv(name, raising=False)


def test_development_runs_the_simulated_tee():
    assert load_settings(Settings).tee == "simulated"


def test_production_refuses_the_simulated_tee(monkeypatch):
    monkeypatch.setenv("COCOON_ENVIRONMENT", "prod")
    with pytest.raises(SettingsError, match="a production worker needs a real TEE"):
        load_settings(Settings)
    monkeypatch.setenv("COCOON_ALLOW_SIMULATED_TEE", "true")  # staging without TDX, on purpose
    assert load_settings(Settings).tee == "simulated"


def test_a_device_the_image_does_not_hold_is_refused_at_start(monkeypatch):
    monkeypatch.setenv("COCOON_ENVIRONMENT", "prod")
    monkeypatch.setenv("COCOON_TEE", "no-such-device")
    with pytest.raises(SettingsError, match="'no-such-device': no such quote device"):
        load_settings(Settings)
