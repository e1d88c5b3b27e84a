"""`cocoon topics apply` against the real broker: creates everything once, then changes nothing."""

from __future__ import annotations

from kafka.admin import (
    AlterConfigOp,
    ConfigResource,
    ConfigResourceType,
    KafkaAdminClient,
    NewTopic,
)
from typer.testing import CliRunner

from cocoon.core.bus.admin import apply_topics, catalog_topics, ensure_instance, list_topics
from cocoon.core.bus.security import kafka_python_security
from cocoon.core.catalog import load_catalog, topic_config
from cocoon.core.topics_cli import app

CATALOG = load_catalog()


def _config(bootstrap: str, topic: str, key: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_python_security())
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={key: None})
        return admin.describe_configs([resource], config_filter="all")["topic"][topic][key]["value"]
    finally:
        admin.close()


def test_apply_twice_is_idempotent_via_the_cli(kafka_bootstrap, unique_name):
    prefix = unique_name("tp") + "."
    runner = CliRunner()
    args = ["apply", "--bootstrap", kafka_bootstrap, "--prefix", prefix]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    expected = len(catalog_topics(CATALOG))
    assert f"{expected} change(s) over {expected} topic(s)" in first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert f"0 change(s) over {expected} topic(s)" in second.output

    on_broker = list_topics(kafka_bootstrap, prefix)
    for spec in catalog_topics(CATALOG):
        assert on_broker[prefix + spec.name] == spec.partitions
        for key, value in topic_config(spec).items():
            assert _config(kafka_bootstrap, prefix + spec.name, key) == value, (spec.name, key)
    assert not any("{" in name for name in on_broker), "templates are never created"

    listed = runner.invoke(app, ["list", "--bootstrap", kafka_bootstrap, "--prefix", prefix])
    assert listed.exit_code == 0 and "missing" not in listed.output


def test_apply_repairs_drifted_configs_and_partitions_but_never_shrinks(
    kafka_bootstrap, unique_name
):
    prefix = unique_name("tp") + "."
    verdicts, heartbeats = CATALOG["attestation.verdicts"], CATALOG["worker.heartbeats"]
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, **kafka_python_security())
    try:
        # Drift: verdicts exists with the wrong cleanup policy and too few partitions;
        # heartbeats exists with more partitions than the catalog says.
        admin.create_topics(
            [
                NewTopic(prefix + verdicts.name, num_partitions=1, replication_factor=1),
                NewTopic(prefix + heartbeats.name, num_partitions=8, replication_factor=1),
            ]
        )
        changes = apply_topics(kafka_bootstrap, [verdicts, heartbeats], prefix=prefix)
        by_topic = {(c.topic, c.action): c.detail for c in changes}
        altered = by_topic[(prefix + verdicts.name, "altered")]
        assert "cleanup.policy: delete -> compact" in altered
        assert by_topic[(prefix + verdicts.name, "partitions")] == f"1 -> {verdicts.partitions}"
        assert (prefix + heartbeats.name, "kept") in by_topic
        assert _config(kafka_bootstrap, prefix + verdicts.name, "cleanup.policy") == "compact"
        assert list_topics(kafka_bootstrap, prefix)[prefix + heartbeats.name] == 8

        # Someone changes a config by hand; apply sets it back, and only that.
        resource = ConfigResource(
            ConfigResourceType.TOPIC,
            prefix + verdicts.name,
            configs={"segment.ms": (AlterConfigOp.SET, "999999")},
        )
        admin.alter_configs([resource], incremental=True)
        again = apply_topics(kafka_bootstrap, [verdicts], prefix=prefix)
        assert [(c.action, c.detail) for c in again] == [
            ("altered", "segment.ms: 999999 -> 3600000")
        ]
        assert [c.action for c in apply_topics(kafka_bootstrap, [verdicts], prefix=prefix)] == [
            "unchanged"
        ]
    finally:
        admin.close()


def test_dry_run_changes_nothing(kafka_bootstrap, unique_name):
    prefix = unique_name("tp") + "."
    changes = apply_topics(
        kafka_bootstrap, [CATALOG["billing.payouts"]], prefix=prefix, dry_run=True
    )
    assert [c.action for c in changes] == ["created"]
    assert list_topics(kafka_bootstrap, prefix) == {}


def test_template_instance_creates_the_topic_and_its_dlq(kafka_bootstrap, unique_name):
    prefix = unique_name("tp") + "."
    changes = ensure_instance(
        kafka_bootstrap, CATALOG["work.{worker_id}"], prefix=prefix, worker_id="w-42"
    )
    assert {(c.topic, c.action) for c in changes} == {
        (prefix + "work.w-42", "created"),
        (prefix + "work.w-42.dlq", "created"),
    }
    assert _config(kafka_bootstrap, prefix + "work.w-42", "max.message.bytes") == "8388608"
    repeat = ensure_instance(
        kafka_bootstrap, CATALOG["work.{worker_id}"], prefix=prefix, worker_id="w-42"
    )
    assert {c.action for c in repeat} == {"unchanged"}
