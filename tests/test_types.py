"""mypy is clean on every package ([tool.mypy] in the root pyproject.toml says which and how)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pyproject.toml"


def test_mypy_checks_every_package() -> None:
    # A new service (or a moved one) must not drop out of the check unnoticed.
    mypy = tomllib.loads(CONFIG.read_text())["tool"]["mypy"]
    sources = sorted(p.parent for p in ROOT.glob("services/*/src/cocoon"))
    packages = sorted(
        f"cocoon.{p.name}"
        for src in sources
        for p in (src / "cocoon").iterdir()
        if p.is_dir() and p.name.isidentifier() and not p.name.startswith("_")
    )
    assert sorted(mypy["packages"]) == packages
    assert sorted(mypy["mypy_path"]) == [str(src.relative_to(ROOT)) for src in sources]


def test_mypy_is_clean_on_every_package() -> None:
    # The venv's own mypy, so its stubs and the installed libraries are the ones checked against;
    # the incremental cache under .cache/mypy keeps a warm run to seconds.
    mypy = Path(sys.executable).with_name("mypy")
    result = subprocess.run(
        [str(mypy), "--config-file", str(CONFIG)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"mypy found errors:\n{result.stdout}{result.stderr}"
