"""One distribution per service, in the shared `cocoon` namespace, and a wheel that carries
its contracts."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from support.repo import REPO_ROOT, SERVICES_DIR

MEMBERS = sorted(p for p in SERVICES_DIR.iterdir() if p.is_dir())


def test_every_directory_under_services_is_a_workspace_member_with_one_package():
    workspace = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    sources = workspace["tool"]["uv"]["sources"]
    for member in MEMBERS:
        project = tomllib.loads((member / "pyproject.toml").read_text())["project"]
        assert project["name"] == f"cocoon-{member.name}"
        assert sources[project["name"]] == {"workspace": True}
        assert project["name"] in workspace["project"]["dependencies"]
        # A namespace package: no distribution owns `cocoon/__init__.py`.
        assert not (member / "src" / "cocoon" / "__init__.py").exists()
        [package] = (member / "src" / "cocoon").iterdir()
        assert (package / "__init__.py").is_file() and (package / "py.typed").is_file()


def test_the_core_wheel_ships_the_contracts_and_the_broker_pom(tmp_path: Path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(SERVICES_DIR / "core"),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("cocoon_core-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    schemas = REPO_ROOT / "schemas"
    expected = {
        f"cocoon/core/schemas/{p.relative_to(schemas)}" for p in schemas.rglob("*") if p.is_file()
    }
    assert expected and expected <= names
    assert "cocoon/core/kafka/pom.xml" in names
    assert "cocoon/core/py.typed" in names
    assert not any(n.startswith("cocoon/gateway") for n in names)
