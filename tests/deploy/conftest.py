"""Fixtures of the deployment tests: image virtualenvs, built once and cached."""

from __future__ import annotations

import hashlib
import shutil
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from support.images import DEV_TARGET, INSTALL_SCRIPT, dev_venv, install
from support.repo import REPO_ROOT, SERVICES_DIR

from cocoon.core.paths import cache_dir

_SKIP = {"build", "__pycache__", ".pytest_cache"}


def _inputs_digest(target: str) -> str:
    """Everything an image's virtualenv is built from: the lock, the script, the Python, and
    the sources of cocoon-core and the service."""
    digest = hashlib.sha256(sys.version.encode())
    for path in (REPO_ROOT / "uv.lock", INSTALL_SCRIPT):
        digest.update(path.read_bytes())
    for source in (SERVICES_DIR / "core", SERVICES_DIR / target):
        for path in sorted(source.rglob("*")):
            parts = set(path.relative_to(source).parts)
            if path.is_file() and not parts & _SKIP and not any(".egg-info" in p for p in parts):
                digest.update(str(path.relative_to(REPO_ROOT)).encode())
                digest.update(path.read_bytes())
    # cocoon-core ships schemas/ (a link into the repository's schemas/)
    for path in sorted((REPO_ROOT / "schemas").rglob("*")):
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class ImageVenvs:
    """Each Dockerfile target's /opt/cocoon as a virtualenv here, built by the target's own
    script on first use and kept in the project cache until its inputs change."""

    def __init__(self) -> None:
        self.root = cache_dir() / "images"
        self._pool = ThreadPoolExecutor(max_workers=4)
        self._futures: dict[str, Future[Path]] = {}
        self._guard = threading.Lock()

    def prefetch(self, *targets: str) -> None:
        """Start building these in the background (several at once: mostly I/O)."""
        with self._guard:
            for target in targets:
                if target != DEV_TARGET and target not in self._futures:
                    self._futures[target] = self._pool.submit(self._build, target)

    def __call__(self, target: str) -> Path:
        if target == DEV_TARGET:
            return dev_venv()
        self.prefetch(target)
        return self._futures[target].result()

    def _build(self, target: str) -> Path:
        venv = self.root / f"{target}-{_inputs_digest(target)}"
        done = venv / ".complete"  # scripts hold the venv's absolute path: built in place
        if done.exists():
            return venv
        for stale in self.root.glob(f"{target}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        install(target, venv)
        done.touch()
        return venv

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def image_venvs():
    venvs = ImageVenvs()
    yield venvs
    venvs.close()
