"""Every metric and label a dashboard panel or an alert uses is one the code exports (or a
recording rule of the platform chart makes), and the ServiceMonitors keep the services' own
`service` label."""

from __future__ import annotations

import importlib
import json
import re

import pytest
from prometheus_client import REGISTRY
from support.charts import rendered
from support.repo import REPO_ROOT

from cocoon.core.runtime.resolve import SERVICES

GRAFANA = REPO_ROOT / "deploy" / "grafana"
# The metric contract of docs/deployment.md that no service exports yet: each is listed so the
# gap is visible, and its test fails (strict xfail) the day the code exports it.
NOT_EXPORTED_YET = {
    "cocoon_requests_total",
    "cocoon_request_duration_seconds",
    "cocoon_ttft_seconds",
    "cocoon_tokens_total",
    "cocoon_workers",
    "cocoon_placements_total",
    "cocoon_ledger_nanoton_total",
    "cocoon_ledger_entries_total",
    "cocoon_payouts_total",
}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, for every metric the services register at import."""
    for module in [*SERVICES.values(), "cocoon.scheduler.metrics", "cocoon.core.runtime.metrics"]:
        importlib.import_module(module)
    out: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):
        name, kind = getattr(collector, "_name", None), getattr(collector, "_type", None)
        if not name or not kind:
            continue
        labels = set(getattr(collector, "_labelnames", ()))
        if kind == "info":
            out[f"{name}_info"] = labels
        for suffix in _SUFFIXES.get(kind, ()):
            out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def recorded() -> dict[str, set[str]]:
    """Metrics the platform chart's recording rules make, with their `by (...)` labels."""
    out = {}
    for doc in rendered("platform", "prod"):
        if doc["kind"] != "PrometheusRule":
            continue
        for group in doc["spec"]["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    by = re.search(r"by \(([^)]*)\)", rule["expr"])
                    out[rule["record"]] = (
                        {s.strip() for s in by.group(1).split(",")} if by else set()
                    )
    return out


def _uses() -> dict[str, list[tuple[set[str], set[str]]]]:
    """cocoon_* metric -> for each query or rule using it: (the cocoon_* metrics of that
    expression, the labels it groups, filters or shows them by)."""
    exprs: list[tuple[str, str]] = []
    for path in sorted(GRAFANA.rglob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    exprs.append((target["expr"], target.get("legendFormat", "")))
    for doc in rendered("platform", "prod"):
        if doc["kind"] == "PrometheusRule":
            exprs += [(r["expr"], "") for g in doc["spec"]["groups"] for r in g["rules"]]
    uses: dict[str, list[tuple[set[str], set[str]]]] = {}
    for expr, legend in exprs:
        names = set(re.findall(r"\b(cocoon_[a-z_]+)\b", expr))
        groups = re.findall(r"by \(([^)]*)\)", expr)
        labels = {s.strip() for group in groups for s in group.split(",") if s.strip()}
        labels |= set(re.findall(r"([a-z_]+)\s*=~?\s*\"", expr))
        labels |= set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", legend))
        for name in names:
            uses.setdefault(name, []).append((names, labels - {"le"}))
    return uses


def _base(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


USES = _uses()


@pytest.mark.parametrize(
    "metric",
    [
        pytest.param(
            m,
            marks=pytest.mark.xfail(
                _base(m) in NOT_EXPORTED_YET, reason="contract metric not exported yet", strict=True
            ),
        )
        for m in sorted(USES)
    ],
)
def test_metric_and_its_labels_are_exported(metric):
    known = exported() | recorded()
    assert metric in known, f"{metric} is on a dashboard or alert and nothing exports it"
    for names, labels in USES[metric]:
        # A label may belong to any metric the expression joins (and `topic`/`group` of the
        # Kafka Exporter's series it reads besides ours).
        have = set().union(*(known.get(n, set()) for n in names))
        missing = labels - have
        assert not missing, (
            f"{metric}: queried by {sorted(missing)}; {sorted(names)} have {sorted(have)}"
        )


def test_the_check_sees_the_verdict_label():
    """The attestation verdict counter is labelled `status` (not `result`)."""
    assert exported()["cocoon_attestation_verdicts_total"] == {"status"}
    assert [labels for _, labels in USES["cocoon_attestation_verdicts_total"]] == [{"status"}]


def test_service_monitors_honor_the_services_own_labels():
    labelled = {n for n, labels in exported().items() if "service" in labels}
    assert labelled, "some runtime metrics carry a service label"
    for env in ("default", "dev", "prod"):
        monitors = [d for d in rendered("cocoon", env) if d["kind"] == "ServiceMonitor"]
        assert monitors
        for monitor in monitors:
            assert all(e.get("honorLabels") is True for e in monitor["spec"]["endpoints"])
