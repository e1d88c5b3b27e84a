"""Every PromQL expression that ships, parsed by Prometheus's own promtool: the platform chart's
recording and alerting rules, and every query of every Grafana dashboard."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from support.charts import rendered
from support.promtool import check_rules
from support.repo import REPO_ROOT

# The first run on a machine builds promtool (minutes on 2 loaded cores); later runs reuse it.
pytestmark = pytest.mark.timeout(1800)

GRAFANA = REPO_ROOT / "deploy" / "grafana"
# Grafana's own variables, as Grafana substitutes them before Prometheus sees the query.
INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")
VARIABLES = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")


def dashboard_queries() -> dict[str, str]:
    """`file#panel/target` -> PromQL, with Grafana's variables substituted."""
    out = {}
    for path in sorted(GRAFANA.rglob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            if panel["datasource"]["uid"] != "${prometheus}":
                continue
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if expr:
                    expr = VARIABLES.sub(".*", INTERVALS.sub("5m", expr))
                    out[f"{path.name}#{panel['id']}/{target['refId']}"] = expr
    return out


def _check(groups: list[dict], tmp_path) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    result = check_rules(path)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_prometheus_rules_pass_promtool(tmp_path):
    rules = [d for d in rendered("platform", "prod") if d["kind"] == "PrometheusRule"]
    alerts = {
        r["alert"] for d in rules for g in d["spec"]["groups"] for r in g["rules"] if "alert" in r
    }
    assert alerts == {
        "CocoonConsumerLagHigh",
        "CocoonDeadLettersGrowing",
        "CocoonNoTrustedWorker",
        "CocoonBillingNotCommitting",
        "CocoonPayoutsStuck",
    }
    out = _check([g for d in rules for g in d["spec"]["groups"]], tmp_path)
    assert "SUCCESS" in out


def test_every_dashboard_query_passes_promtool(tmp_path):
    queries = dashboard_queries()
    assert len(queries) >= 30
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(queries.values())]
    _check([{"name": "dashboards", "rules": rules}], tmp_path)


def test_promtool_rejects_what_prometheus_would(tmp_path):
    with pytest.raises(AssertionError, match="parse error"):
        _check(
            [{"name": "bad", "rules": [{"record": "x", "expr": "sum by (a (rate(y[5m]))"}]}],
            tmp_path,
        )
