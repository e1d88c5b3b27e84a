"""Static checks of charts/cocoon and deploy/helm (no helm or kubectl needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from support.charts import (
    ADDONS,
    CHART,
    CHARTS,
    ENVIRONMENTS,
    PLATFORM,
    lint,
    merged_values,
    rendered,
    rendered_with,
)
from support.repo import REPO_ROOT

from cocoon.core.catalog import load_catalog
from cocoon.core.runtime.resolve import SERVICES
from cocoon.core.runtime.settings import ServiceSettings
from cocoon.core.strimzi import CLUSTER

REFERENCE_KEYS = {
    "secretName",
    "configMapName",
    "existingSecret",
    "key",
    "env",
    "userKey",
    "passwordKey",
    "clusterCaSecret",
    "userSecretPrefix",
}
SECRETISH = re.compile(
    r"(password|passwd|pepper|private|secret|token|apikey|api_key|mnemonic)", re.I
)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _values(env: str) -> dict:
    """charts/cocoon's values for `env`, merged by helm itself."""
    path = ENVIRONMENTS[env]
    return merged_values(CHART / "values.yaml", *([path] if path else []))


def _plain_yaml_files() -> list[Path]:
    """YAML files that are data, not Go templates."""
    files = [p for p in PLATFORM.rglob("*.yaml") if "templates" not in p.parts]
    files += [p for p in PLATFORM.rglob("*.yml") if "templates" not in p.parts]
    files = [p for p in files if p.relative_to(PLATFORM).parts[0] != "charts"]  # sub-charts
    return sorted([*files, CHART / "values.yaml", CHART / "Chart.yaml"])


def test_every_yaml_file_parses():
    files = _plain_yaml_files()
    names = {p.name for p in files}
    assert {"dev.yaml", "prod.yaml", "values.yaml", "Chart.yaml", "kafka-topics.yaml"} <= names
    for path in files:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert any(d for d in docs), f"{path} is empty"


def test_chart_metadata():
    chart = _load(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2" and chart["name"] == "cocoon"
    platform = _load(PLATFORM / "Chart.yaml")
    # No sub-charts: the add-ons are releases of their own, so the chart renders from a clone.
    assert "dependencies" not in platform
    addons = {p.stem for p in ADDONS.glob("*.yaml")}
    for name in ("strimzi-kafka-operator", "kube-prometheus-stack", "tempo", "grafana"):
        assert {name, f"{name}-dev"} <= addons, name


def test_services_match_the_runtime_and_each_has_a_template():
    values = _values("default")
    assert set(values["services"]) == set(SERVICES), "values.services != `cocoon run` names"
    for name in values["services"]:
        template = CHART / "templates" / f"{name}.yaml"
        assert template.is_file(), f"no template for service {name}"
        text = template.read_text()
        if name == "worker-proxy":
            assert 'index .Values.services "worker-proxy"' in text
            assert 'include "cocoon.container" $ctx' in text
            for kind in ("cocoon.service", "cocoon.pdb", "cocoon.hpa", "cocoon.serviceMonitor"):
                assert f'include "{kind}"' in text, f"worker-proxy lacks {kind}"
        else:
            assert f'include "cocoon.standardService" (dict "root" $ "name" "{name}")' in text
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    standard = helpers[helpers.index('define "cocoon.standardService"') :]
    for kind in ("cocoon.deployment", "cocoon.service", "cocoon.pdb", "cocoon.hpa"):
        assert f'include "{kind}"' in standard
    assert 'include "cocoon.serviceMonitor"' in standard


def test_container_runs_cocoon_and_probes_use_the_health_port():
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    container = helpers[helpers.index('define "cocoon.container"') :]
    container = container[: container.index("{{- end -}}\n\n")]
    assert 'args: ["run", {{ .name | quote }}]' in container
    probes = re.findall(
        r"(startupProbe|readinessProbe|livenessProbe):\n\s+grpc:\n\s+port: (.+)", container
    )
    assert {p[0] for p in probes} == {"startupProbe", "readinessProbe", "livenessProbe"}
    assert all(port.strip() == "{{ $v.ports.health }}" for _, port in probes), probes
    assert "containerPort: {{ $v.ports.health }}" in container
    assert "containerPort: {{ $v.ports.metrics }}" in container
    env = helpers[helpers.index('define "cocoon.env"') :]
    for name, source in {
        "COCOON_GRPC_HEALTH_PORT": "$v.ports.health",
        "COCOON_METRICS_PORT": "$v.ports.metrics",
        "COCOON_KAFKA_BOOTSTRAP": "$v.kafka.bootstrap",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "$v.otel.endpoint",
    }.items():
        assert re.search(
            rf"- name: {name}\n\s+value: {{{{ {re.escape(source)} \| quote }}}}", env
        ), name
    monitor = helpers[helpers.index('define "cocoon.serviceMonitor"') :]
    assert "port: metrics" in monitor and "path: /metrics" in monitor
    # the runtime's own defaults agree with the chart's ports
    ports = _values("default")["ports"]
    fields = ServiceSettings.model_fields
    assert ports["health"] == fields["grpc_health_port"].default
    assert ports["metrics"] == fields["metrics_port"].default


def test_no_secret_material_in_templates_or_values():
    for path in [*CHART.rglob("*"), *PLATFORM.rglob("*")]:
        if not path.is_file() or "charts" in path.relative_to(REPO_ROOT).parts[2:3]:
            continue
        text = path.read_text(errors="replace")
        assert "-----BEGIN" not in text, f"{path}: key material"
        if path.suffix in (".yaml", ".tpl"):
            assert not re.search(r"^kind:\s*Secret\s*$", text, re.M), f"{path}: defines a Secret"
            assert "stringData" not in text, f"{path}: inlines secret data"

    def walk(node, where: str):
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{where}.{key}"
                if isinstance(value, str) and SECRETISH.search(key) and key not in REFERENCE_KEYS:
                    pytest.fail(f"{here}: looks like an inlined secret value")
                walk(value, here)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")

    for path in (CHART / "values.yaml", PLATFORM / "values.yaml", *ENVIRONMENTS.values()):
        if path:
            walk(_load(path), path.name)


def test_secrets_are_referenced_and_mounted_only_where_needed():
    values = _values("prod")
    secrets = values["secrets"]
    for sid, ref in secrets.items():
        # a Secret, or a ConfigMap for public material (the verdict key's public half)
        assert set(ref) in ({"secretName", "key", "env"}, {"configMapName", "key", "env"}), sid
        assert ref["env"].startswith("COCOON_") and ref["env"].endswith("_FILE")
    assert "configMapName" in secrets["attestationPublicKey"]
    assert "configMapName" in secrets["registryPublicKey"]  # its private half is never here
    wanted = {
        "attestation": ["attestationSigningKey", "registryPublicKey"],
        "billing": ["attestationPublicKey", "tonWalletKey", "tonApiUrl", "tonApiKey"],
        "gateway": ["apiKeys", "attestationPublicKey", "registryPublicKey"],
        "scheduler": ["attestationPublicKey"],
        "worker-proxy": [],
        "telegram": [
            "telegramToken",
            "telegramGatewayKey",
            "telegramWebhookSecret",
            "telegramClientConfig",
        ],
    }
    assert {name: svc["secrets"] for name, svc in values["services"].items()} == wanted
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert "secretKeyRef" not in helpers, "keys are mounted as files, not env values"
    assert "readOnly: true" in helpers


def test_the_mounted_telegram_secrets_reach_the_bot_under_the_names_it_reads(tmp_path):
    from cocoon.telegram.settings import Settings

    values = _values("prod")
    env = {}
    for sid in values["services"]["telegram"]["secrets"]:
        path = tmp_path / sid
        path.write_text(f"value-of-{sid}\n")
        env[values["secrets"][sid]["env"]] = str(path)
    env.update(values["services"]["telegram"]["env"])
    env["COCOON_TELEGRAM_WEBHOOK_URL"] = "https://bot.example.org"
    fields = {name.removeprefix("COCOON_").lower(): value for name, value in env.items()}
    settings = Settings(**fields)
    assert settings.token() == "value-of-telegramToken"
    assert settings.api_key() == "value-of-telegramGatewayKey"
    assert settings.webhook_secret() == "value-of-telegramWebhookSecret"
    assert settings.telegram_mode == "webhook"
    assert settings.telegram_sealing == "client"
    assert str(settings.telegram_client_config_file).endswith("telegramClientConfig")


def test_the_mounted_ton_secrets_reach_billing_under_the_names_it_reads(tmp_path):
    from cocoon.billing.ton.config import TonSettings

    secrets = _values("prod")["secrets"]
    files = {sid: tmp_path / sid for sid in ("tonWalletKey", "tonApiUrl", "tonApiKey")}
    files["tonApiUrl"].write_text("https://testnet.toncenter.com/api/v2\n")
    files["tonApiKey"].write_text("k-123\n")
    env = {secrets[sid]["env"]: str(path) for sid, path in files.items()}
    env |= {"COCOON_TON_NETWORK": "testnet", "COCOON_TON_DEPOSIT_ADDRESS": "0:" + "ab" * 32}
    settings = TonSettings.from_env(env)
    assert settings.wallet_secret_file == files["tonWalletKey"]
    assert settings.api_url == "https://testnet.toncenter.com/api/v2"
    assert settings.api_key == "k-123"


def test_billing_runs_as_one_replica_without_an_autoscaler_everywhere():
    # Its replicas share one transactional id: a second one would fence the first, forever.
    for env in ENVIRONMENTS:
        billing = _values(env)["services"]["billing"]
        assert billing["replicas"] == 1, env
        assert billing["autoscaling"]["enabled"] is False, env
        assert billing["pdb"] == {"maxUnavailable": 1}, env


def test_security_context_and_resources():
    for env in ENVIRONMENTS:
        values = _values(env)
        assert values["podSecurityContext"]["runAsNonRoot"] is True
        assert values["podSecurityContext"]["runAsUser"] != 0
        ctx = values["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        if env != "dev":  # Tilt's live update needs a writable root fs (set in the Tiltfile)
            assert ctx["readOnlyRootFilesystem"] is True
        for name, svc in values["services"].items():
            assert svc["resources"]["requests"] and svc["resources"]["limits"]["memory"], name
            assert ("minAvailable" in svc["pdb"]) != ("maxUnavailable" in svc["pdb"]), name


@pytest.mark.parametrize("env", list(ENVIRONMENTS))
def test_autoscaling_never_exceeds_consumed_partitions(env):
    catalog = load_catalog()
    for name, svc in _values(env)["services"].items():
        scaling = svc["autoscaling"]
        if not scaling.get("enabled") or name == "worker-proxy":
            continue
        partitions = [
            s.partitions for s in catalog.values() if name in s.consumers and not s.template
        ]
        assert partitions, f"{name} consumes nothing"
        assert scaling["minReplicas"] <= scaling["maxReplicas"] <= max(partitions), (
            f"{env}: {name} may scale to {scaling['maxReplicas']} consumers, "
            f"but its largest topic has {max(partitions)} partitions"
        )


def test_worker_proxy_runs_on_gpu_tdx_nodes_with_a_local_engine():
    prod = _values("prod")["services"]["worker-proxy"]
    assert prod["kind"] in ("StatefulSet", "Deployment")
    assert prod["runtimeClassName"]
    assert prod["nodeSelector"]["cocoon.io/tdx"] == "true"
    assert {t["key"] for t in prod["tolerations"]} >= {"nvidia.com/gpu", "cocoon.io/tdx"}
    assert prod["engine"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    for env in ENVIRONMENTS:
        engine = _values(env)["services"]["worker-proxy"]["engine"]
        args = " ".join(engine["args"])
        assert "127.0.0.1" in args and str(engine["port"]) in args, f"{env}: engine not on loopback"
    template = (CHART / "templates" / "worker-proxy.yaml").read_text()
    engine_part = template[template.index("- name: engine") :]
    assert "containerPort" not in engine_part, "the engine must not expose a port"
    assert "COCOON_ENGINE_URL" in template and "127.0.0.1" in template
    for key in ("runtimeClassName", "nodeSelector", "tolerations"):
        assert key in (CHART / "templates" / "_helpers.tpl").read_text()


def test_platform_kafka_matches_the_generated_resources():
    text = (PLATFORM / "templates" / "kafka.yaml").read_text()
    assert re.search(r"kind: Kafka\nmetadata:\n  name: (\S+)", text).group(1) == CLUSTER
    assert "kind: KafkaNodePool" in text and "strimzi.io/cluster: cocoon" in text
    catalog_tpl = (PLATFORM / "templates" / "catalog.yaml").read_text()
    assert '.Files.Get "generated/kafka-topics.yaml"' in catalog_tpl
    assert '.Files.Get "generated/kafka-users.yaml"' in catalog_tpl
    link = PLATFORM / "dashboards"
    assert link.is_symlink() and link.resolve() == (REPO_ROOT / "deploy" / "grafana").resolve()
    rules = (PLATFORM / "templates" / "monitoring.yaml").read_text()
    assert "record: cocoon_consumer_lag" in rules
    # the chart's default bootstrap is the Strimzi bootstrap Service of that cluster
    for env in ENVIRONMENTS:
        assert _values(env)["kafka"]["bootstrap"].startswith(f"{CLUSTER}-kafka-bootstrap:")
    prod = merged_values(PLATFORM / "values.yaml", PLATFORM / "prod.yaml")
    assert prod["kafkaCluster"]["plainListener"] is False, "prod: mTLS listener only"
    assert _values("prod")["kafka"]["tls"]["enabled"] is True


def test_tiltfile_and_dockerfile():
    tilt = (REPO_ROOT / "Tiltfile").read_text()
    assert "deploy/docker/Dockerfile" in tilt and "deploy/helm/dev.yaml" in tilt
    assert "target='dev'" in tilt
    assert "8080:8080" in tilt and "svc/grafana 3000" in tilt
    # the dev Secrets the chart mounts, and every add-on with its dev overlay
    assert "bash deploy/dev/secrets.sh" in tilt
    for addon in ADDONS.glob("*-dev.yaml"):
        assert f"'{addon.stem.removesuffix('-dev')}'" in tilt, addon.name
    docker = (REPO_ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    assert docker.startswith("# syntax=") and "FROM runtime AS dev\n" in docker
    assert 'ENTRYPOINT ["cocoon"]' in docker and "USER 10001" in docker


@pytest.mark.parametrize("env", list(ENVIRONMENTS))
@pytest.mark.parametrize("chart", list(CHARTS))
def test_helm_lints_and_renders(chart, env):
    lint(chart, env)
    kinds = [doc["kind"] for doc in rendered(chart, env)]
    if chart == "cocoon":
        assert kinds.count("PodDisruptionBudget") == 5 and kinds.count("ServiceMonitor") == 5
        assert kinds.count("Deployment") + kinds.count("StatefulSet") == 5
    else:
        assert {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "ConfigMap"} <= set(kinds)
        assert {"PodMonitor", "PrometheusRule"} <= set(kinds)


def _addon(name: str, env: str) -> dict:
    files = [ADDONS / f"{name}.yaml"] + ([ADDONS / f"{name}-dev.yaml"] if env == "dev" else [])
    return merged_values(*files)


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_addon_values(env):
    prometheus = _addon("kube-prometheus-stack", env)["prometheus"]["prometheusSpec"]
    claim = prometheus.get("storageSpec", {}).get("volumeClaimTemplate")
    assert (claim is None) == (env == "dev"), f"{env}: Prometheus storage {claim}"
    # Grafana asks Tempo on the port Tempo serves its query API on.
    tempo_port = _addon("tempo", env)["tempo"]["server"]["http_listen_port"]
    sources = _addon("grafana", env)["datasources"]["datasources.yaml"]["datasources"]
    (tempo,) = [s for s in sources if s["type"] == "tempo"]
    assert tempo["url"] == f"http://tempo:{tempo_port}"
    assert _addon("grafana", env)["admin"]["existingSecret"] == (
        "" if env == "dev" else "grafana-admin"
    )


def _worker_proxy_container(objects: tuple[dict, ...]) -> dict:
    [workload] = [o for o in objects if o["kind"] in ("StatefulSet", "Deployment")
                  and o["metadata"]["name"].endswith("worker-proxy")]  # fmt: skip
    [container] = [
        c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == "worker-proxy"
    ]
    return container


def test_worker_proxy_in_a_td_mounts_configfs_tsm_with_the_rights_it_takes():
    """prod (tdx-configfs in Kata's TDX runtime class): the worker-proxy mounts the TD kernel's
    configfs and makes report entries, as uid 0 with CAP_SYS_ADMIN and nothing else."""
    container = _worker_proxy_container(rendered("cocoon", "prod"))
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["COCOON_TEE"] == "tdx-configfs"
    assert container["args"] == ["run", "worker-proxy"]
    ctx = container["securityContext"]
    assert ctx["runAsUser"] == 0 and ctx["runAsNonRoot"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
    # Every other container of every service keeps the chart's unprivileged context.
    for obj in rendered("cocoon", "prod"):
        for c in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            if c is not container and c["name"] != "worker-proxy":
                assert "add" not in c["securityContext"].get("capabilities", {}), c["name"]


@pytest.mark.parametrize(
    "values",
    [
        # No runtime class: the pod shares the node's kernel and must get no rights there.
        {"services": {"worker-proxy": {"tee": "tdx-configfs", "runtimeClassName": ""}}},
        # A TD with another quote device has no use for configfs.
        {"environment": "dev", "services": {"worker-proxy": {"tee": "simulated",
                                                             "runtimeClassName": "kata-qemu-tdx"}}},
    ],
)  # fmt: skip
def test_worker_proxy_gets_no_configfs_rights_outside_a_td_or_without_the_device(values, tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    container = _worker_proxy_container(rendered_with("cocoon", path))
    assert container["args"] == ["run", "worker-proxy"]
    assert container["securityContext"] == _values("default")["securityContext"]


@pytest.mark.parametrize("env", list(ENVIRONMENTS))
def test_scheduler_replicas_are_bounded_by_its_shards(env):
    """Each scheduler instance owns shards: partition n of every topic of its group (the range
    assignor). An instance beyond the shard count would own nothing, so the rendered HPA (and the
    fixed replica count) stay within it; and the group's topics have equal partition counts,
    or the shards would not line up (docs/architecture.md, "Several scheduler instances")."""
    catalog = load_catalog()
    (group,) = [
        g
        for g in yaml.safe_load((REPO_ROOT / "schemas/groups.yaml").read_text())["groups"]
        if g["name"] == "scheduler"
    ]
    counts = {catalog[topic].partitions for topic in group["topics"] + ["scheduler.leases"]}
    assert len(counts) == 1, counts
    (shards,) = counts
    objects = rendered("cocoon", env)
    scheduler = [o for o in objects if o["metadata"]["name"].endswith("scheduler")]
    hpas = [o for o in scheduler if o["kind"] == "HorizontalPodAutoscaler"]
    (deployment,) = [o for o in scheduler if o["kind"] == "Deployment"]
    assert 1 <= deployment["spec"].get("replicas", 1) <= shards
    for hpa in hpas:
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= shards, hpa["spec"]
    if env == "prod":
        assert hpas and hpas[0]["spec"]["minReplicas"] >= 2  # a second instance takes over
