"""Grafana dashboards: valid JSON, and built only on the metric contract in docs/deployment.md."""

from __future__ import annotations

import json
import re

from support.repo import REPO_ROOT

GRAFANA = REPO_ROOT / "deploy" / "grafana"
CONTRACT = GRAFANA / "contract"
RUNTIME_METRICS = {
    "cocoon_service_info",
    "cocoon_service_ready",
    "cocoon_messages_processed_total",
    "cocoon_message_processing_seconds",
    "cocoon_messages_in_flight",
}


def _contract_metrics() -> dict[str, str]:
    doc = (REPO_ROOT / "docs" / "deployment.md").read_text()
    section = doc[doc.index("## Metrics: the contract") :]
    section = section[: section.index("\n## ", 10)]
    rows = re.findall(r"^\| `(cocoon_[a-z_]+)` \| (counter|gauge|histogram) \|", section, re.M)
    return dict(rows)


def _queries(dashboard: dict) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        exprs += [t.get("expr", "") for t in panel.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            exprs.append(var["query"] if isinstance(var["query"], str) else var["query"]["query"])
    return exprs


def _names(expr: str) -> set[str]:
    return set(re.findall(r"\bcocoon_[a-z_]+", expr))


def _base(name: str, contract: dict[str, str]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        stem = name.removesuffix(suffix)
        if stem != name and contract.get(stem) == "histogram":
            return stem
    if name.removesuffix("_bucket") == "cocoon_message_processing_seconds":
        return "cocoon_message_processing_seconds"
    return name


def test_contract_table_is_documented():
    contract = _contract_metrics()
    for name in (
        "cocoon_requests_total",
        "cocoon_ttft_seconds",
        "cocoon_consumer_lag",
        "cocoon_workers",
        "cocoon_ledger_nanoton_total",
    ):
        assert name in contract
    assert contract["cocoon_ttft_seconds"] == "histogram"
    for name, kind in contract.items():
        assert (kind == "counter") == name.endswith("_total"), name


def test_every_dashboard_is_valid_and_unique():
    paths = sorted(GRAFANA.rglob("*.json"))
    assert len(paths) >= 5
    uids = set()
    for path in paths:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] not in uids, f"{path}: duplicate uid"
        uids.add(dashboard["uid"])
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path}: duplicate panel ids"
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] in ("${prometheus}", "${tempo}"), path
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{path}: panel {panel['title']} off the grid"


def test_contract_dashboards_use_only_contract_metrics_and_cover_them():
    contract = _contract_metrics()
    used: set[str] = set()
    for path in sorted(CONTRACT.glob("*.json")):
        for expr in _queries(json.loads(path.read_text())):
            for name in _names(expr):
                base = _base(name, contract)
                assert base in contract or base in RUNTIME_METRICS, f"{path.name}: {name}"
                used.add(base)
    assert set(contract) <= used, f"contract metrics on no dashboard: {set(contract) - used}"


def test_required_panels_exist():
    panels = {}
    for path in CONTRACT.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            panels[panel["title"]] = panel
    exprs = " ".join(t.get("expr", "") for p in panels.values() for t in p.get("targets", []))
    assert "histogram_quantile(0.5, sum by (model, le) (rate(cocoon_ttft_seconds_bucket" in exprs
    assert "histogram_quantile(0.99, sum by (model, le) (rate(cocoon_ttft_seconds_bucket" in exprs
    assert 'cocoon_workers{state="attested"' in exprs and 'cocoon_workers{state="busy"' in exprs
    assert "cocoon_consumer_lag" in exprs and "cocoon_ledger_nanoton_total" in exprs
    traces = [p for p in panels.values() if p["type"] == "traces"]
    assert traces and traces[0]["targets"][0]["queryType"] == "traceql"
