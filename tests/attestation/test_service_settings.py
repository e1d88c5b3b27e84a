"""The attestation service trusts the simulated TDX root only in development."""

from __future__ import annotations

import pytest

from cocoon.attestation.service import Settings
from cocoon.core.runtime.settings import SettingsError, load_settings


def test_simulated_root_is_refused_in_production(monkeypatch):
    monkeypatch.delenv("COCOON_ALLOW_SIMULATED_TEE", raising=False)
    monkeypatch.setenv("COCOON_DEV_SIMTDX", "true")
    monkeypatch.setenv("COCOON_ENVIRONMENT", "dev")
    assert load_settings(Settings).dev_simtdx is True
    monkeypatch.setenv("COCOON_ENVIRONMENT", "prod")
    with pytest.raises(SettingsError, match="production never trusts the simulated TDX root"):
        load_settings(Settings)
    monkeypatch.setenv("COCOON_ALLOW_SIMULATED_TEE", "true")
    assert load_settings(Settings).dev_simtdx is True
