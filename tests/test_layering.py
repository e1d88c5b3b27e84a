"""Services never import each other, and each distribution declares what it imports.

`cocoon.network` (the `cocoon up` launcher, which starts every service) may reach across on
purpose; every other distribution imports only `cocoon.core` and itself, and a client of the
network (the Telegram bot) also the client library, as any application would.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from support.repo import SERVICES_DIR

DISTRIBUTIONS = sorted(p.name for p in SERVICES_DIR.iterdir() if (p / "pyproject.toml").exists())
# Third-party modules a package imports only inside an optional path, with the reason.
OPTIONAL_IMPORTS = {
    "testcontainers": "cocoon.core.kafka.provider: the Docker-based broker, dev only",
    "llama_cpp": "cocoon.network.engine_server: the CPU engine, installed beside the network",
    "jinja2": "cocoon.network.engine_server: the engine's chat templates (llama-cpp-python's)",
    "typer": "cocoon.client.cocoon_cli: `cocoon client`, loaded only by cocoon-core's CLI",
}


def package_dir(distribution: str) -> Path:
    [package] = (SERVICES_DIR / distribution / "src" / "cocoon").iterdir()
    return package


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def cocoon_packages(modules: set[str]) -> set[str]:
    return {m.split(".")[1] for m in modules if m.startswith("cocoon.")}


def imports_of(distribution: str) -> set[str]:
    return set().union(*(imported_modules(p) for p in package_dir(distribution).rglob("*.py")))


def declared_requirements(distribution: str, seen: set[str] | None = None) -> set[str]:
    """Names of the distributions `distribution` depends on, transitively through cocoon-*."""
    seen = seen if seen is not None else set()
    for line in requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.marker is not None and "extra" in str(requirement.marker):
            continue
        name = requirement.name.lower().replace("_", "-")
        if name not in seen:
            seen.add(name)
            if name.startswith("cocoon-"):
                declared_requirements(name, seen)
    return seen


# Distributions that are clients of the network, not parts of it: they may use its client library.
CLIENTS_OF_THE_NETWORK = {"telegram"}
# Modules of the client library a service may import, and why: pure formats, no I/O, stdlib only.
SHARED_CLIENT_MODULES = {
    "gateway": {
        "cocoon.client.openai_responses": "the Responses API translation, the same on both paths"
    },
}


def dist_name(distribution_dir: str) -> str:
    pyproject = tomllib.loads((SERVICES_DIR / distribution_dir / "pyproject.toml").read_text())
    return pyproject["project"]["name"]


@pytest.mark.parametrize("distribution", [d for d in DISTRIBUTIONS if d != "network"])
def test_a_service_imports_only_core_and_itself(distribution: str) -> None:
    own = package_dir(distribution).name
    allowed = {"core", own} | ({"client"} if distribution in CLIENTS_OF_THE_NETWORK else set())
    shared = set(SHARED_CLIENT_MODULES.get(distribution, {}))
    crossing = {
        str(path.relative_to(SERVICES_DIR)): sorted(
            cocoon_packages(imported_modules(path) - shared) - allowed
        )
        for path in package_dir(distribution).rglob("*.py")
    }
    assert {p: pkgs for p, pkgs in crossing.items() if pkgs} == {}


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_a_distribution_declares_every_library_it_imports(distribution: str) -> None:
    owners = packages_distributions()
    declared = declared_requirements(dist_name(distribution)) | {dist_name(distribution)}
    undeclared = {}
    for module in imports_of(distribution):
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top in OPTIONAL_IMPORTS or top == "cocoon":
            continue
        candidates = {d.lower().replace("_", "-") for d in owners.get(top, [])}
        if not candidates & declared:
            undeclared[top] = sorted(candidates) or ["not installed"]
    assert undeclared == {}, f"add to services/{distribution}/pyproject.toml: {undeclared}"


def test_a_shared_client_module_needs_nothing_beyond_the_standard_library() -> None:
    for modules in SHARED_CLIENT_MODULES.values():
        for module in modules:
            path = package_dir("client") / f"{module.rsplit('.', 1)[1]}.py"
            imported = {m.split(".")[0] for m in imported_modules(path)}
            assert imported <= set(sys.stdlib_module_names) | {"__future__"}, module


def test_the_checks_see_an_import() -> None:
    assert cocoon_packages(imports_of("billing")) >= {"core", "billing"}
    assert "tonsdk" in {m.split(".")[0] for m in imports_of("billing")}
