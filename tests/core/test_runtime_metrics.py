"""The dashboards only query metric names the runtime really exports."""

from __future__ import annotations

import json
import re

from prometheus_client import REGISTRY, generate_latest
from support.repo import REPO_ROOT

from cocoon.core.runtime.metrics import IN_FLIGHT, MESSAGES, PROCESSING_SECONDS, SERVICE_READY


def _dashboard_metric_names() -> set[str]:
    names: set[str] = set()
    for path in (REPO_ROOT / "deploy" / "grafana").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                names.update(re.findall(r"\bcocoon_[a-z_]+", target.get("expr", "")))
    return names


def test_dashboard_queries_match_exported_metrics():
    # Labelled metrics only appear once a child exists.
    SERVICE_READY.labels("probe")
    IN_FLIGHT.labels("probe")
    MESSAGES.labels("probe", "t", "ok")
    PROCESSING_SECONDS.labels("probe", "t")
    exported = set(re.findall(r"^(cocoon_[a-z_]+)", generate_latest(REGISTRY).decode(), re.M))
    wanted = _dashboard_metric_names()
    assert wanted, "no dashboard found under deploy/grafana"
    assert wanted <= exported, f"dashboards query unknown metrics: {wanted - exported}"
