"""What each image holds, checked without a Docker engine: the Dockerfile's per-service step
(deploy/docker/install-service.sh) is run here into a fresh virtualenv."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.repo import REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "Dockerfile"
SERVICES = ["gateway", "attestation", "scheduler", "billing", "worker-proxy", "telegram"]


def _importable(venv: Path, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([venv / "bin" / "python", "-c", probe]).returncode == 0


def test_the_worker_image_holds_core_and_the_worker_proxy_only(tmp_path: Path, image_venvs) -> None:
    venv = image_venvs("worker-proxy")
    assert _importable(venv, "cocoon.core") and _importable(venv, "cocoon.worker_proxy.service")
    for other in ("cocoon.gateway", "cocoon.billing", "cocoon.scheduler", "cocoon.attestation"):
        assert not _importable(venv, other), f"{other} is in the worker image"
    for library in ("tonsdk", "fastapi", "dcap_qvl", "pytest"):
        assert not _importable(venv, library), f"{library} is in the worker image"
    # The contracts come from the installed wheel, not from a source tree.
    probe = (
        "from cocoon.core.catalog import load_catalog; from cocoon.core.paths import schemas_dir;"
        "print(schemas_dir()); print(sorted(load_catalog()))"
    )
    out = subprocess.run(
        [venv / "bin" / "python", "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COCOON_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert out.returncode == 0, out.stderr
    schemas, topics = out.stdout.splitlines()
    assert schemas.startswith(str(venv)) and "inference.requests" in topics
    cocoon = venv / "bin" / "cocoon"
    assert subprocess.run([cocoon, "run", "--help"], capture_output=True).returncode == 0
    # Only what is installed adds commands: no billing or gateway tools in the worker's image.
    assert subprocess.run([cocoon, "billing", "--help"], capture_output=True).returncode == 2


def test_the_telegram_image_holds_the_client_library_and_no_service(image_venvs) -> None:
    # The bot is a client of the network: it seals with cocoon.client, as any application would.
    venv = image_venvs("telegram")
    assert _importable(venv, "cocoon.telegram.sealed") and _importable(
        venv, "cocoon.client.session"
    )
    for other in ("cocoon.gateway", "cocoon.billing", "cocoon.scheduler", "cocoon.worker_proxy"):
        assert not _importable(venv, other), f"{other} is in the telegram image"


@pytest.mark.parametrize("service", SERVICES)
def test_the_dockerfile_has_a_target_per_service_running_it(service: str) -> None:
    text = DOCKERFILE.read_text()
    assert f"FROM runtime AS {service}\n" in text
    assert f"RUN install-service.sh {service} /opt/cocoon python\n" in text
    assert f'CMD ["run", "{service}"]' in text
