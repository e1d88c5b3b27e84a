"""The images of deploy/docker/Dockerfile without a Docker engine: what each target runs
(ENTRYPOINT, CMD, ENV, read from the Dockerfile) and a virtualenv holding what it holds.

A service target's /opt/cocoon is built by deploy/docker/install-service.sh, so `install`
runs that same script into a directory here. The `dev` target (Tilt's image) holds every
distribution, `cocoon up` and the CPU engine: the checkout's own .venv holds the same.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from support.repo import REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "Dockerfile"
INSTALL_SCRIPT = REPO_ROOT / "deploy" / "docker" / "install-service.sh"
DEV_TARGET = "dev"
DEV_IMAGE = "cocoon"  # the name the Tiltfile builds the dev target under
IMAGE_ROOT = "/opt/cocoon"  # where every target's virtualenv lives in the image


@dataclass(frozen=True)
class ImageConfig:
    target: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: dict[str, str]


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _exec_form(rest: str) -> tuple[str, ...]:
    import json

    return tuple(json.loads(rest))


def image_config(target: str) -> ImageConfig:
    """ENTRYPOINT, CMD and ENV of `target`, following its stages' FROM chain."""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] = []
    for word, rest in _instructions(DOCKERFILE.read_text()):
        if word == "FROM":
            match = re.match(r"(\S+)\s+AS\s+(\S+)", rest, re.I)
            base, name = (match.group(1), match.group(2)) if match else (rest, "")
            current = []
            stages[name] = (base, current)
        else:
            current.append((word, rest))
    if target not in stages:
        raise KeyError(f"{DOCKERFILE} has no target {target!r}")
    chain = []
    name = target
    while name in stages:
        chain.append(name)
        name = stages[name][0]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: dict[str, str] = {}
    for stage in reversed(chain):
        for word, rest in stages[stage][1]:
            if word == "ENTRYPOINT":
                entrypoint, cmd = _exec_form(rest), ()  # a new ENTRYPOINT resets CMD
            elif word == "CMD":
                cmd = _exec_form(rest)
            elif word == "ENV":
                env |= dict(pair.split("=", 1) for pair in shlex.split(rest))
    return ImageConfig(target, entrypoint, cmd, env)


def targets() -> list[str]:
    return re.findall(r"^FROM runtime AS (\S+)$", DOCKERFILE.read_text(), re.M)


def target_of(image: str) -> str:
    """The Dockerfile target an image reference was built from: `<repo>-<service>:<tag>` for
    a service image, the Tiltfile's `cocoon` for the dev image."""
    repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    if repository == DEV_IMAGE:
        return DEV_TARGET
    for target in targets():
        if target != DEV_TARGET and repository.endswith(f"-{target}"):
            return target
    raise LookupError(f"{image}: built from no target of {DOCKERFILE}")


def install(service: str, venv: Path) -> Path:
    """Build `service`'s image virtualenv into `venv`, as its Dockerfile target does."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        ["bash", str(INSTALL_SCRIPT), service, str(venv), sys.executable],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"install-service.sh {service} failed:\n{result.stderr}")
    return venv


def dev_venv() -> Path:
    return Path(sys.prefix)
