"""Prometheus's own `promtool`, built once from the Go module proxy into the project cache.

Prometheus ships no Python package; `go install .../cmd/promtool@<version>` builds the real one
(a few minutes the first time; Go's module and build caches make later builds fast).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from cocoon.core.paths import cache_dir

# Prometheus v3.x is published to the module proxy as v0.3xx.y.
PROMETHEUS_MODULE_VERSION = "v0.316.0"
PACKAGE = "github.com/prometheus/prometheus/cmd/promtool"


class PromtoolUnavailable(RuntimeError):
    pass


def ensure_promtool() -> Path:
    target = cache_dir() / "tools" / f"promtool-{PROMETHEUS_MODULE_VERSION}" / "promtool"
    if target.is_file():
        return target
    go = shutil.which("go")
    if go is None:
        raise PromtoolUnavailable("`go` is not on PATH: promtool is built from the Go module proxy")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / "staging"
    env = {**os.environ, "GOBIN": str(staging), "GOFLAGS": "-buildvcs=false"}
    result = subprocess.run(
        [go, "install", f"{PACKAGE}@{PROMETHEUS_MODULE_VERSION}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    if result.returncode != 0:
        raise PromtoolUnavailable(f"go install {PACKAGE} failed:\n{result.stderr[-3000:]}")
    (staging / "promtool").rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` on a rules file: PromQL parsed by Prometheus itself."""
    return subprocess.run(
        [str(ensure_promtool()), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
