"""The two Helm charts, their values per environment, and their rendering by the real helm."""

from __future__ import annotations

import functools
from pathlib import Path

import yaml
from support.helm import helm
from support.repo import REPO_ROOT

CHART = REPO_ROOT / "charts" / "cocoon"
PLATFORM = REPO_ROOT / "deploy" / "helm"
ADDONS = PLATFORM / "addons"
# One values file per environment configures both releases; "default" is the charts' own.
ENVIRONMENTS: dict[str, Path | None] = {
    "default": None,
    "dev": PLATFORM / "dev.yaml",
    "prod": PLATFORM / "prod.yaml",
}
CHARTS = {"cocoon": CHART, "platform": PLATFORM}
KUBE_VERSION = "1.33.0"  # what the schemas are checked against (support.kube_schemas)
RELEASE = "cocoon"
NAMESPACE = "cocoon"


class RenderError(AssertionError):
    pass


def values_args(env: str) -> list[str]:
    path = ENVIRONMENTS[env]
    return ["-f", str(path)] if path else []


def rendered(chart: str, env: str) -> tuple[dict, ...]:
    """Every object `helm template` renders for `chart` with `env`'s values (cached)."""
    path = ENVIRONMENTS[env]
    return rendered_with(chart, *([path] if path else []))


@functools.cache
def rendered_with(chart: str, *files: Path) -> tuple[dict, ...]:
    """Every object `helm template` renders for `chart` with these values files (cached)."""
    result = helm(
        "template",
        RELEASE,
        str(CHARTS[chart]),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        *(arg for path in files for arg in ("-f", str(path))),
    )
    if result.returncode != 0:
        names = ", ".join(p.name for p in files) or "defaults"
        raise RenderError(f"helm template {chart} ({names}) failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def lint(chart: str, env: str) -> str:
    """`helm lint --strict` output; raises when helm finds an error or a warning."""
    result = helm("lint", "--strict", str(CHARTS[chart]), *values_args(env))
    if result.returncode != 0:
        raise RenderError(f"helm lint {chart} ({env}) failed:\n{result.stdout}{result.stderr}")
    return result.stdout


@functools.cache
def merged_values(*files: Path) -> dict:
    """The values a chart sees for these files, as helm itself merges them (later files win, a
    null removes a key): rendered through a one-template probe chart, not re-implemented."""
    probe = REPO_ROOT / "tests" / "support" / "values-probe"
    result = helm("template", "probe", str(probe), *(arg for f in files for arg in ("-f", str(f))))
    if result.returncode != 0:
        raise RenderError(f"helm could not merge {files}:\n{result.stderr}")
    (doc,) = [d for d in yaml.safe_load_all(result.stdout) if d]
    return _drop_nulls(yaml.safe_load(doc["data"]["values.yaml"]) or {})


def _drop_nulls(node):
    # Between -f files helm keeps a null; the chart's own defaults would then lose the key.
    if isinstance(node, dict):
        return {k: _drop_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_drop_nulls(v) for v in node]
    return node
