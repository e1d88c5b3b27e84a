"""From a service name on the command line to its `build` function and settings class.

A service module `cocoon.<service>.service` provides `build(settings) -> Service` and, if it
has settings of its own, `Settings` (a ServiceSettings subclass). `module:function` is also
accepted, for services that are not part of the product (tests, experiments).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from cocoon.core.runtime.service import Service
from cocoon.core.runtime.settings import ServiceSettings

SERVICES: dict[str, str] = {
    "gateway": "cocoon.gateway.service",
    "attestation": "cocoon.attestation.service",
    "scheduler": "cocoon.scheduler.service",
    "billing": "cocoon.billing.service",
    "worker-proxy": "cocoon.worker_proxy.service",
    "telegram": "cocoon.telegram.service",
}


class ServiceNotFound(LookupError):
    """The name does not lead to a buildable service; the message says why."""


@dataclass(frozen=True)
class ServiceEntry:
    name: str | None  # None for module:function targets: the Service's own name is used
    build: Callable[[ServiceSettings], Service]
    settings_cls: type[ServiceSettings]


def _import(module_name: str, label: str | None) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only "this module is missing" means not implemented; a missing dependency is a bug.
        if exc.name and module_name.startswith(exc.name):
            raise ServiceNotFound(
                f"service {label or module_name!r} is not implemented yet (no module {module_name})"
            ) from None
        raise


def resolve(name: str) -> ServiceEntry:
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        label = None
    elif name in SERVICES:
        module_name, attribute, label = SERVICES[name], "build", name
    else:
        known = ", ".join(SERVICES)
        raise ServiceNotFound(f"unknown service {name!r}; known services: {known}")
    module = _import(module_name, label)
    build = getattr(module, attribute, None)
    if not callable(build):
        raise ServiceNotFound(f"{module_name} has no function {attribute!r} building the service")
    settings_cls = getattr(module, "Settings", ServiceSettings)
    if not (isinstance(settings_cls, type) and issubclass(settings_cls, ServiceSettings)):
        raise ServiceNotFound(f"{module_name}.Settings is not a ServiceSettings subclass")
    return ServiceEntry(label, build, settings_cls)
