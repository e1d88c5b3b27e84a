"""Every Python package under services/ is shipped by the distribution."""

from __future__ import annotations

import tomllib

from cocoon.core.paths import REPO_ROOT


def test_every_package_under_services_is_listed_in_pyproject():
    declared = set(
        tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    services = REPO_ROOT / "services"
    on_disk = {
        ".".join(("cocoon", *init.parent.relative_to(services).parts)).rstrip(".")
        for init in services.rglob("__init__.py")
        if ".venv" not in init.parts
    }
    missing = sorted(on_disk - declared)
    stale = sorted(declared - on_disk)
    assert not missing, f"add these packages to [tool.setuptools] packages: {missing}"
    assert not stale, f"these listed packages have no __init__.py: {stale}"
