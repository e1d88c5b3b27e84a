"""Services never import each other: each imports only `cocoon.core` and itself.

Two places may reach across on purpose: `cocoon.network` (the `cocoon up` launcher, which starts
every service) and the top-level `cocoon.cli` (which mounts every service's commands).
"""

from __future__ import annotations

import ast

import pytest

from cocoon.core.paths import REPO_ROOT

SERVICES = REPO_ROOT / "services"
PACKAGES = sorted(
    p.name for p in SERVICES.iterdir() if (p / "__init__.py").exists() and p.name != "network"
)


def imported_cocoon_packages(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "cocoon" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_a_service_imports_only_core_and_itself(package: str) -> None:
    allowed = {"core", package}
    crossing = {
        str(path.relative_to(REPO_ROOT)): sorted(imported_cocoon_packages(path) - allowed)
        for path in (SERVICES / package).rglob("*.py")
    }
    assert {p: pkgs for p, pkgs in crossing.items() if pkgs} == {}


def test_the_check_sees_an_import() -> None:
    assert imported_cocoon_packages(SERVICES / "billing" / "service.py") >= {"core", "billing"}
