"""Strimzi manifests rendered from the topic catalog: topics, ACLs, and the committed copy."""

from __future__ import annotations

import typer
import yaml
from support.repo import REPO_ROOT
from typer.testing import CliRunner

from cocoon.core.catalog import load_catalog, topic_config
from cocoon.core.strimzi import (
    CLUSTER,
    render_files,
    render_kafka_topics,
    render_kafka_users,
)
from cocoon.core.strimzi_cli import app as strimzi_app

GENERATED = REPO_ROOT / "deploy" / "helm" / "generated"
SERVICES = ("gateway", "attestation", "scheduler", "billing", "worker-proxy")


def _catalog():
    return load_catalog()


def _topic_acls(user: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        res = acl["resource"]
        if res["type"] == "topic":
            key = (res["patternType"], res["name"])
            assert key not in out, f"{user['metadata']['name']}: two ACLs for {key}"
            out[key] = set(acl["operations"])
    return out


def test_one_kafkatopic_per_concrete_topic_and_dlq():
    catalog = _catalog()
    topics = render_kafka_topics(catalog)
    by_name = {t["spec"]["topicName"]: t for t in topics}
    assert len(by_name) == len(topics), "duplicate KafkaTopic"
    concrete = {n for n, s in catalog.items() if not s.template}
    assert set(by_name) == concrete
    # every concrete topic's DLQ is there too
    for name in concrete:
        spec = catalog[name]
        if spec.dead_letter:
            assert spec.dead_letter in by_name
    assert not any("{" in n for n in by_name), "templates are created at run time"
    for name, topic in by_name.items():
        spec = catalog[name]
        assert topic["kind"] == "KafkaTopic"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == CLUSTER
        assert topic["spec"]["partitions"] == spec.partitions
        assert topic["spec"]["config"] == topic_config(spec)
        assert topic["spec"]["config"]["cleanup.policy"] == spec.cleanup_policy
        assert topic["spec"]["config"]["retention.ms"] == str(spec.retention_ms)
        assert "replicas" not in topic["spec"], "replication is the broker default per env"


def test_topic_prefix_applies_to_names():
    topics = render_kafka_topics(_catalog(), prefix="staging.")
    assert all(t["spec"]["topicName"].startswith("staging.") for t in topics)
    assert all(t["metadata"]["name"].startswith("staging.") for t in topics)


def test_each_service_gets_exactly_its_catalog_topics():
    catalog = _catalog()
    users = {u["metadata"]["name"]: u for u in render_kafka_users(catalog)}
    assert {f"cocoon-{s}" for s in SERVICES} <= set(users)
    for service in [*SERVICES, "operator"]:
        expected: dict[tuple[str, str], set[str]] = {}
        for spec in catalog.values():
            key = ("prefix", spec.name.split("{")[0]) if spec.template else ("literal", spec.name)
            ops = set()
            if service in spec.producers:
                ops.add("Write")
            if service in spec.consumers:
                ops.add("Read")
            if spec.template_info and spec.template_info.created_by == service:
                ops |= {"Create", "DescribeConfigs", "AlterConfigs"}
            if ops:
                expected.setdefault(key, set()).update(ops)
        user = users.get(f"cocoon-{service}")
        actual = _topic_acls(user) if user else {}
        assert actual == expected, service


def test_acl_spot_checks_against_the_catalog():
    users = {u["metadata"]["name"]: u for u in render_kafka_users(_catalog())}
    billing = _topic_acls(users["cocoon-billing"])
    assert billing[("literal", "billing.ledger")] == {"Read", "Write"}
    # gateway reads the ledger for an account's statement (GET /v1/cocoon/statement, behind that
    # account's key), never writes it; worker-proxy reads verdicts (its own), never writes them
    assert _topic_acls(users["cocoon-gateway"])[("literal", "billing.ledger")] == {"Read"}
    worker = _topic_acls(users["cocoon-worker-proxy"])
    assert worker[("literal", "attestation.verdicts")] == {"Read"}
    # Its work topic and DLQ: it reads work, dead-letters bad items, and creates both at start.
    assert {"Read", "Write", "Create", "DescribeConfigs", "AlterConfigs"} <= worker[
        ("prefix", "work.")
    ]
    scheduler = _topic_acls(users["cocoon-scheduler"])
    assert ("prefix", "work.") not in scheduler
    for name, user in users.items():
        spec = user["spec"]
        assert spec["authorization"]["type"] == "simple"
        # GPU owners' hosts and tools use SCRAM, where a worker's issued credential works too.
        scram = name in {"cocoon-worker-enrolment", "cocoon-worker-owner"}
        assert spec["authentication"]["type"] == ("scram-sha-512" if scram else "tls")
        kinds = {a["resource"]["type"] for a in spec["authorization"]["acls"]}
        assert kinds <= {"topic", "group", "transactionalId", "cluster"}
        assert not any(a["resource"].get("name") == "*" for a in spec["authorization"]["acls"]), (
            "no wildcard ACLs"
        )


def test_the_worker_owner_user_reads_its_view_and_writes_nothing():
    users = {u["metadata"]["name"]: u for u in render_kafka_users(_catalog())}
    owner = users["cocoon-worker-owner"]
    assert _topic_acls(owner) == {
        ("literal", "attestation.verdicts"): {"Read"},
        ("literal", "worker.heartbeats"): {"Read"},
        ("literal", "billing.earnings"): {"Read"},  # not the ledger, balances or receipts
        ("literal", "scheduler.standings"): {"Read"},
    }
    kinds = {a["resource"]["type"] for a in owner["spec"]["authorization"]["acls"]}
    assert kinds == {"topic"}  # no group, no idempotent write


def test_the_worker_enrolment_user_may_only_enrol():
    users = {u["metadata"]["name"]: u for u in render_kafka_users(_catalog())}
    assert _topic_acls(users["cocoon-worker-enrolment"]) == {
        ("literal", "attestation.evidence"): {"Write"},
        ("literal", "attestation.verdicts"): {"Read"},
        ("literal", "attestation.credentials"): {"Read"},  # sealed to each worker's enclave
    }


def test_only_billing_has_transactional_ids():
    users = render_kafka_users(_catalog())
    holders = {
        u["metadata"]["name"]
        for u in users
        for a in u["spec"]["authorization"]["acls"]
        if a["resource"]["type"] == "transactionalId"
    }
    assert holders == {"cocoon-billing"}


def test_groups_are_the_service_name():
    users = {u["metadata"]["name"]: u for u in render_kafka_users(_catalog())}
    acls = users["cocoon-scheduler"]["spec"]["authorization"]["acls"]
    groups = [a for a in acls if a["resource"]["type"] == "group"]
    assert groups == [
        {
            "resource": {"type": "group", "name": "scheduler", "patternType": "prefix"},
            "operations": ["Read"],
            "host": "*",
        }
    ]


def test_committed_manifests_are_up_to_date_with_the_catalog():
    files = render_files(_catalog())
    for name, text in files.items():
        path = GENERATED / name
        assert path.is_file(), f"missing {path}: run `cocoon topics strimzi --out {GENERATED}`"
        assert path.read_text() == text, (
            f"{path} is out of date with schemas/topics/: "
            "run `cocoon topics strimzi --out deploy/helm/generated`"
        )
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs and all(d["apiVersion"] == "kafka.strimzi.io/v1beta2" for d in docs)


def test_a_catalog_change_is_detected(tmp_path):
    """The up-to-date check can fail: a changed partition count changes the rendering."""
    catalog_dir = tmp_path / "topics"
    catalog_dir.mkdir()
    for file in (REPO_ROOT / "schemas" / "topics").glob("*.yaml"):
        text = file.read_text()
        if file.name == "billing.ledger.yaml":
            text = text.replace("partitions: 12", "partitions: 24")
        (catalog_dir / file.name).write_text(text)
    changed = render_files(load_catalog(catalog_dir))
    assert changed != render_files(_catalog())
    root = typer.Typer()
    root.add_typer(strimzi_app, name="topics")
    runner = CliRunner()
    check = runner.invoke(
        root,
        ["topics", "strimzi", "--out", str(GENERATED), "--catalog", str(catalog_dir), "--check"],
    )
    assert check.exit_code == 1, check.output
    ok = runner.invoke(root, ["topics", "strimzi", "--out", str(GENERATED), "--check"])
    assert ok.exit_code == 0, ok.output
    out = tmp_path / "out"
    wrote = runner.invoke(
        root, ["topics", "strimzi", "--out", str(out), "--catalog", str(catalog_dir)]
    )
    assert wrote.exit_code == 0, wrote.output
    assert "partitions: 24" in (out / "kafka-topics.yaml").read_text()
