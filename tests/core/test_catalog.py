"""The topic catalog is consistent with the schemas and with itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cocoon.core.catalog import (
    DLQ_SUFFIX,
    SERVICES,
    concrete_topics,
    instantiate,
    load_catalog,
    spec_for,
    topic_config,
)
from cocoon.core.codec import default_store
from cocoon.core.paths import schemas_dir

CATALOG = load_catalog()
EXPECTED = {
    "inference.requests",
    "billing.reservations",
    "billing.grants",
    "billing.topups",
    "billing.refunds",
    "inference.assignments",
    "work.{worker_id}",
    "inference.responses",
    "usage.receipts",
    "inference.outcomes",
    "attestation.evidence",
    "attestation.verdicts",
    "attestation.registry",
    "attestation.attested",
    "attestation.collateral",
    "attestation.credentials",
    "worker.heartbeats",
    "billing.ledger",
    "billing.earnings",
    "billing.snapshots",
    "billing.balances",
    "billing.payouts",
    "scheduler.standings",
    "scheduler.leases",
}


def test_the_catalog_has_the_architecture_topics_and_a_dlq_for_each():
    primary = {n for n, s in CATALOG.items() if s.dead_letter_of is None}
    assert primary == EXPECTED
    for name in primary:
        assert CATALOG[name].dead_letter == name + DLQ_SUFFIX
        dlq = CATALOG[name + DLQ_SUFFIX]
        assert dlq.record == "cocoon.bus.DeadLetter" and dlq.dead_letter_of == name


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_record_and_versions_exist_and_services_are_known(name):
    spec = CATALOG[name]
    store = default_store()
    assert list(spec.versions) == store.versions(spec.record)[: len(spec.versions)]
    for version in spec.versions:
        store.get(spec.record, version)
    assert set(spec.producers) | set(spec.consumers) <= SERVICES
    assert spec.producers and spec.consumers
    if spec.key is not None:
        fields = {f["name"] for f in store.latest(spec.record).raw["fields"]}
        assert spec.key in fields, f"{name}: key field {spec.key} is not in {spec.record}"


def test_compacted_topics_are_the_state_topics():
    compacted = {n for n, s in CATALOG.items() if s.compacted}
    assert compacted == {
        "attestation.verdicts",
        "attestation.registry",
        "attestation.attested",
        "attestation.collateral",
        "attestation.credentials",
        "billing.balances",
        "billing.snapshots",
        "scheduler.standings",
        "scheduler.leases",
    }
    assert CATALOG["attestation.verdicts"].key == "worker_id"
    assert CATALOG["billing.balances"].key == "account_id"


def test_co_partitioned_topics_have_equal_partition_counts():
    assert CATALOG["billing.ledger"].partitions == CATALOG["billing.balances"].partitions
    # A scheduler instance owns partition n of each (docs/architecture.md, "Several scheduler
    # instances"): the range assignor hands out equal numbers only when the counts are equal.
    shard_topics = [
        "inference.requests",
        "billing.reservations",
        "inference.outcomes",
        "inference.assignments",
        "usage.receipts",
        "scheduler.leases",
    ]
    assert len({CATALOG[name].partitions for name in shard_topics}) == 1


def test_topic_config_is_kafka_configs():
    config = topic_config(CATALOG["attestation.verdicts"])
    assert config["cleanup.policy"] == "compact"
    assert config["retention.ms"] == "-1"
    assert all(isinstance(v, str) for v in config.values())


def test_template_instantiation():
    template = CATALOG["work.{worker_id}"]
    assert template.template and template.template_info is not None
    assert template.template_info.created_by in SERVICES
    assert "how" in template.template_info.model_fields_set
    topic = instantiate(template, worker_id="w-123")
    assert (topic.name, topic.dead_letter, topic.template) == (
        "work.w-123",
        "work.w-123.dlq",
        False,
    )
    assert "{worker_id}" not in topic.description
    with pytest.raises(ValueError, match="does not match"):
        instantiate(template, worker_id="W.1")
    with pytest.raises(ValueError, match="needs parameters"):
        instantiate(template, worker="w-1")
    assert spec_for("work.w-123").record == "cocoon.inference.WorkItem"
    assert spec_for("work.w-123.dlq").dead_letter_of == "work.w-123"
    with pytest.raises(KeyError):
        spec_for("work.")
    assert all(not s.template for s in concrete_topics(CATALOG))


def test_each_file_is_named_after_its_topic_and_uses_only_known_keys():
    for path in (schemas_dir() / "topics").glob("*.yaml"):
        raw = yaml.safe_load(path.read_text())
        assert path.stem == raw["name"]


def _write(tmp: Path, name: str, **overrides) -> Path:
    raw = {
        "name": name,
        "description": "d",
        "key": "worker_id",
        "partitions": 1,
        "cleanup_policy": "delete",
        "retention_ms": 1000,
        "config": {},
        "producers": ["gateway"],
        "consumers": ["scheduler"],
        "record": "cocoon.worker.Heartbeat",
        "versions": [1],
        "dead_letter": f"{name}.dlq",
        **overrides,
    }
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    return tmp


def test_a_catalog_with_an_unknown_service_is_refused(tmp_path: Path):
    _write(tmp_path, "x.topic", producers=["mallory"])
    with pytest.raises(ValueError, match="unknown services"):
        load_catalog(tmp_path)


def test_a_catalog_with_a_misnamed_dlq_is_refused(tmp_path: Path):
    _write(tmp_path, "x.topic", dead_letter="x.dead")
    with pytest.raises(ValueError, match="dead_letter must be"):
        load_catalog(tmp_path)
