"""The common service runtime: settings, logging, health, metrics, graceful shutdown.

A service implements `Service` and exposes `build(settings) -> Service` in
`cocoon.<service>.service`; `cocoon run <service>` (or `run_service`) does the rest.
"""

from cocoon.core.runtime.service import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_GRACE_EXCEEDED,
    EXIT_OK,
    Service,
    run_service,
    serve,
)
from cocoon.core.runtime.settings import ServiceSettings, SettingsError, load_settings

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_GRACE_EXCEEDED",
    "EXIT_OK",
    "Service",
    "ServiceSettings",
    "SettingsError",
    "load_settings",
    "run_service",
    "serve",
]
