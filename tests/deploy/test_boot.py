"""The boot test: every pod charts/cocoon renders, started as a process with exactly what the
chart gives its container, reaches SERVING on a real broker; a pod that would crash in the
cluster fails here.

Per values file (default, dev, prod): render the chart with the real helm; add the Secrets an
operator creates (docs/deployment.md) and those Strimzi writes for the KafkaUsers (from a CA
this test makes; the dev environment gets only what Tilt makes, deploy/dev/secrets.sh); then
start every Deployment's and StatefulSet's Cocoon container at once (support.pods says how a
pod becomes a process and which three rewrites that takes), wait for each startup probe, check
every container port answers on the pod's address, and stop them all with SIGTERM, as a
rollout does: each must exit 0 within its termination grace period.

The broker is this module's own, started once: an empty cluster, like a fresh Strimzi one,
with the topics of the platform chart's KafkaTopics and two listeners, plaintext (dev's
`plain`) and mTLS with client certificates required (production's `tls`).
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kafka.admin import KafkaAdminClient, NewTopic
from support.charts import ENVIRONMENTS, NAMESPACE, rendered
from support.helm import ensure_tools
from support.images import DEV_TARGET, image_config, target_of, targets
from support.operator import operator_objects, scram_passwords, strimzi_secrets
from support.pki import TestCA, write_broker_tls
from support.pods import Objects, Pod, PodFailed, cocoon_containers
from support.repo import REPO_ROOT

from cocoon.core.acls import principal_acls
from cocoon.core.bus.principals import apply_acls, ensure_users
from cocoon.core.bus.security import KafkaSecurity
from cocoon.core.kafka import broker
from cocoon.core.kafka.provider import selected_provider
from cocoon.core.paths import cache_dir
from cocoon.core.runtime.resolve import resolve
from cocoon.core.runtime.settings import ENV_PREFIX

# Quote devices that talk to TDX hardware, which this machine does not have: a worker asking
# for one must refuse to start, saying so, rather than fall back to a simulated quote.
HARDWARE_TEES = {"tdx-configfs"}


@dataclass(frozen=True)
class BootBroker:
    plain: str
    tls: str
    scram: str
    ca: TestCA
    scram_ca: bytes  # the local broker's SCRAM listener has a CA of its own
    admin: KafkaSecurity

    def bootstrap(self, protocol: str) -> str:
        listeners = {"PLAINTEXT": self.plain, "SSL": self.tls, "SASL_SSL": self.scram}
        return listeners[protocol]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _create_topics(bootstrap: str, security: KafkaSecurity) -> None:
    """What Strimzi's topic operator makes of the platform chart's KafkaTopics."""
    topics = [d for d in rendered("platform", "prod") if d["kind"] == "KafkaTopic"]
    assert topics
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **security.kafka_python())
    try:
        admin.create_topics(
            [
                NewTopic(
                    t["spec"]["topicName"],
                    t["spec"]["partitions"],
                    1,
                    topic_configs={k: str(v) for k, v in t["spec"].get("config", {}).items()},
                )
                for t in topics
            ]
        )
    finally:
        admin.close()


@pytest.fixture(scope="module")
def boot_broker(image_venvs) -> Iterator[BootBroker]:
    # The images build while the broker starts.
    image_venvs.prefetch(*(t for t in targets() if t != DEV_TARGET))
    if selected_provider() != "local":
        pytest.skip("the boot test runs a local broker with an mTLS listener")
    home = cache_dir() / "kafka" / f"boot-{uuid.uuid4().hex[:8]}"
    ca = TestCA("cocoon-cluster-ca")
    keystore, truststore = write_broker_tls(ca, home / "tls")
    tls = broker.BrokerTls(_free_port(), keystore, truststore)
    port = broker.free_port_pair()
    layout = broker.BrokerLayout(
        home=home, port=port, controller_port=port + 1, tls=tls, dev_plain_port=_free_port()
    )
    try:
        broker.start(layout, heap="512m", echo=lambda _: None)
        admin = layout.admin_security()
        _create_topics(layout.bootstrap, admin)
        # What Strimzi's user operator makes of the KafkaUsers: the prod pods' mTLS principals
        # (CN=cocoon-<service>) get the catalog's ACLs.
        apply_acls(layout.bootstrap, principal_acls(), security=admin)
        yield BootBroker(
            layout.dev_plain_bootstrap,
            tls.bootstrap,
            layout.bootstrap,
            ca,
            layout.secrets.ca_file.read_bytes(),
            admin,
        )
    finally:
        broker.stop(layout)
        shutil.rmtree(home, ignore_errors=True)


def _dev_secrets(registry_key: Path) -> tuple[dict, ...]:
    """What Tilt applies before the dev chart: deploy/dev/secrets.sh's manifests (the registry
    key it keeps for the developer goes to `registry_key`, not the checkout)."""
    env = {
        **os.environ,
        "PATH": f"{ensure_tools()}:{os.environ['PATH']}",
        "COCOON_REGISTRY_KEY_FILE": str(registry_key),
    }
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "deploy" / "dev" / "secrets.sh")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def _objects(env: str, broker: BootBroker, scratch: Path) -> Objects:
    objects = Objects()
    objects.add_rendered(rendered("cocoon", env))
    users = [d for d in rendered("platform", env) if d["kind"] == "KafkaUser"]
    kafka_secrets = strimzi_secrets(broker.ca, users, broker.scram_ca)
    # What Strimzi's user operator does for a SCRAM KafkaUser: its password, in the cluster.
    ensure_users(broker.scram, scram_passwords(kafka_secrets), security=broker.admin)
    objects.secrets |= kafka_secrets
    if env == "dev":
        objects.add_rendered(_dev_secrets(scratch / "registry-key.pem"))
    else:
        secrets, config_maps = operator_objects()
        objects.secrets |= secrets
        objects.config_maps |= config_maps
    return objects


def _pods(env: str, image_venvs, tmp_path) -> list[Pod]:
    pods = []
    for workload in rendered("cocoon", env):
        if workload["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in cocoon_containers(workload, _runs_a_service):
            target = target_of(container["image"])
            root = tmp_path / f"{workload['metadata']['name']}-{container['name']}"
            pods.append(Pod(workload, container, image_config(target), image_venvs(target), root))
    return pods


def _runs_a_service(container: dict) -> bool:
    """A container of an image built here running `cocoon run <service>` (not the engine
    sidecar, which the dev image also serves: the worker-proxy needs it to serve, not to start).
    """
    try:
        config = image_config(target_of(container["image"]))
    except LookupError:
        return False
    command = container.get("command") or list(config.entrypoint)
    args = container["args"] if "args" in container else list(config.cmd)
    return command == ["cocoon"] and args[:1] == ["run"]


def _names_read(pod: Pod) -> set[str]:
    """COCOON_* variables the code in the pod's image reads: its Settings fields, and every
    such name written out in its sources (os.environ reads; `X_FILE` where `X` is read)."""
    service = pod.argv[pod.argv.index("run") + 1]
    fields = resolve(service).settings_cls.model_fields
    names = {f"{ENV_PREFIX}{field.upper()}" for field in fields}
    probe = "import cocoon, json; print(json.dumps(list(cocoon.__path__)))"
    out = subprocess.run(
        [pod.venv / "bin" / "python", "-c", probe], capture_output=True, text=True, check=True
    )
    for root in json.loads(out.stdout):
        for path in Path(root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    names.update(re.findall(r"\bCOCOON_[A-Z0-9_]+\b", node.value))
    return names | {f"{name}_FILE" for name in names}


def _hardware_tee(pod: Pod) -> str | None:
    tee = pod.env.get("COCOON_TEE")
    return tee if tee in HARDWARE_TEES else None


async def _boot(pods: list[Pod]) -> dict[str, str]:
    """Start every pod at once; the failure of each pod that did not become ready."""
    for pod in pods:
        pod.start()

    async def ready(pod: Pod) -> str | None:
        try:
            await pod.wait_for_startup_probe()
        except PodFailed as exc:
            return str(exc)
        unreachable = pod.unreachable_ports()
        if unreachable:
            return f"{pod.name}: SERVING, but nothing answers on {', '.join(unreachable)}"
        return None

    results = await asyncio.gather(*(ready(pod) for pod in pods))
    return {pod.name: failure for pod, failure in zip(pods, results, strict=True) if failure}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("env", list(ENVIRONMENTS))
async def test_every_pod_boots_to_serving(env, boot_broker, image_venvs, tmp_path):
    objects = _objects(env, boot_broker, tmp_path)
    pods = _pods(env, image_venvs, tmp_path)
    assert {p.container["name"] for p in pods} == {
        "gateway",
        "attestation",
        "scheduler",
        "billing",
        "worker-proxy",
    }
    for pod in pods:
        pod.prepare(objects, NAMESPACE, boot_broker.bootstrap)
        # A variable nobody reads is a setting that silently does nothing.
        given = {var["name"] for var in pod.container.get("env", [])}
        unread = {n for n in given if n.startswith(ENV_PREFIX)} - _names_read(pod)
        assert not unread, f"{pod.name}: the chart sets {sorted(unread)}, which nothing reads"
    try:
        failures = await _boot(pods)
    finally:
        codes = {
            pod.name: pod.stop(pod.spec.get("terminationGracePeriodSeconds", 30)) for pod in pods
        }
    for pod in pods:
        tee = _hardware_tee(pod)
        if tee is not None:
            # No TDX here: the pod must exit before serving, on a TEE error (the device missing
            # from the image, or its hardware interface absent), never serve simulated quotes.
            failure = failures.pop(pod.name, "")
            assert "exited with" in failure, failure or f"{pod.name} served without TDX"
            assert re.search(rf"TeeError|COCOON_TEE|{re.escape(tee)}", failure), failure
            codes.pop(pod.name)
    assert failures == {}, "\n\n".join(failures.values())
    unclean = [
        f"{p.name} exited {codes[p.name]}:\n{p.log_tail()}" for p in pods if codes.get(p.name)
    ]
    assert not unclean, "not a clean stop on SIGTERM:\n" + "\n\n".join(unclean)


def test_the_dockerfile_is_read_as_docker_would():
    gateway = image_config("gateway")
    assert gateway.entrypoint == ("cocoon",) and gateway.cmd == ("run", "gateway")
    assert gateway.env["COCOON_CACHE_DIR"] == "/tmp/cocoon-cache"
    assert image_config("dev").cmd == ("--help",)
    assert target_of("ghcr.io/cocoon/cocoon-worker-proxy:0.1.0") == "worker-proxy"
    assert target_of("cocoon:dev") == "dev"
    with pytest.raises(LookupError):
        target_of("vllm/vllm-openai:v0.10.1")
    assert subprocess.run(["true"]).returncode == 0 and REPO_ROOT.is_dir()
