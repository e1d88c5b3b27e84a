"""Fixtures for the HTTP surface: a key store, a scripted backend, an app."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from gateway_doubles import ScriptedBackend, default_backend

from cocoon.gateway.api import ApiSettings, KeyStore, create_app


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
