"""Every object both charts render, with every values file, is valid against the Kubernetes
schemas and the Strimzi and Prometheus-operator CRDs (strict: unknown fields are errors)."""

from __future__ import annotations

import copy

import pytest
from support.charts import CHARTS, ENVIRONMENTS, PLATFORM, rendered, rendered_with
from support.kube_schemas import all_errors, errors


@pytest.mark.parametrize("env", list(ENVIRONMENTS))
@pytest.mark.parametrize("chart", list(CHARTS))
def test_every_rendered_object_is_schema_valid(chart, env):
    docs = rendered(chart, env)
    assert docs
    assert all_errors(docs) == []


def _first(kind: str) -> dict:
    for chart in CHARTS:
        for doc in rendered(chart, "prod"):
            if doc["kind"] == kind:
                return copy.deepcopy(doc)
    raise AssertionError(f"no {kind} rendered")


def test_the_validation_can_fail():
    """Each kind of check rejects what an API server would: a null where an int-or-string
    belongs, an unknown field in a built-in kind, and in each vendored CRD."""
    pdb = _first("PodDisruptionBudget")
    pdb["spec"]["minAvailable"] = None
    assert errors(pdb)
    deployment = _first("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["envs"] = []
    assert errors(deployment)
    for kind in ("Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"):
        doc = _first(kind)
        assert errors(doc) == [], kind
        doc["spec"]["partitionz"] = 3
        assert errors(doc), kind
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        doc = _first(kind)
        doc["spec"]["unknown"] = True
        assert errors(doc), kind
    assert errors({"apiVersion": "example.com/v1", "kind": "Nothing", "metadata": {"name": "x"}})


def test_the_telegram_overlay_routes_the_webhook_to_the_port_the_bot_listens_on():
    """deploy/helm/telegram.yaml (the bot behind an HTTPS Ingress) renders valid objects, and the
    Ingress reaches the bot: Telegram's path, to the Service's http port, to the container port
    the bot binds (COCOON_HTTP_PORT)."""
    docs = rendered_with("cocoon", PLATFORM / "prod.yaml", PLATFORM / "telegram.yaml")
    assert all_errors(docs) == []
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    ingress = by_kind[("Ingress", "cocoon-telegram")]
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/telegram/webhook", "Exact")
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]
    backend = path["backend"]["service"]
    service = by_kind[("Service", backend["name"])]
    [port] = [p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"]]
    pod = by_kind[("Deployment", "cocoon-telegram")]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    [target] = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["COCOON_HTTP_PORT"] == str(target["containerPort"])
    assert env["COCOON_TELEGRAM_MODE"] == "webhook"
    assert env["COCOON_TELEGRAM_WEBHOOK_URL"] == f"https://{rule['host']}"
