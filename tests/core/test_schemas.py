"""The contracts: every example validates, versions evolve compatibly, no plaintext fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastavro.utils import generate_many
from fastavro.validation import validate

from cocoon.core.catalog import load_catalog
from cocoon.core.codec import default_store
from cocoon.core.codec.compat import (
    IncompatibleSchemasError,
    assert_compatible,
    check_pair,
    check_store,
    resolve,
)
from cocoon.core.codec.jsonform import from_json, to_json
from cocoon.core.codec.models import RECORDS, model_for
from cocoon.core.codec.store import SchemaStore, parse_version
from cocoon.core.paths import schemas_dir

EXAMPLES = sorted((schemas_dir() / "examples").glob("*/v*/*.json"))
STORE = default_store()
CATALOG = load_catalog()


def _example_id(path: Path) -> str:
    return "/".join(path.parts[-3:])


def _load_example(path: Path):
    topic, version = path.parent.parent.name, int(path.parent.name.removeprefix("v"))
    spec = CATALOG[topic]
    schema = STORE.get(spec.record, version)
    return spec, schema, from_json(schema.parsed, json.loads(path.read_text()))


def test_there_are_examples():
    assert len(EXAMPLES) >= 20


@pytest.mark.parametrize("path", EXAMPLES, ids=_example_id)
def test_example_validates_against_its_topic_schema_and_round_trips(path: Path):
    spec, schema, value = _load_example(path)
    assert schema.version in spec.versions, f"{path}: v{schema.version} not listed for the topic"
    assert validate(value, schema.parsed, raise_errors=True)
    data = STORE.encode(spec.record, value, schema.version)
    name, back = STORE.decode(data, reader=spec.record, reader_version=schema.version)
    assert back == value
    # The readable form is stable both ways.
    assert from_json(schema.parsed, to_json(schema.parsed, back)) == value
    # The generated model accepts it (latest version, resolved).
    _, latest = STORE.decode(data, reader=spec.record)
    model_for(name).from_avro(latest)


def test_every_topic_and_version_has_an_example():
    have = {(p.parent.parent.name, int(p.parent.name[1:])) for p in EXAMPLES}
    wanted = {(s.name, v) for s in CATALOG.values() if not s.dead_letter_of for v in s.versions}
    assert wanted <= have, f"missing examples: {sorted(wanted - have)}"
    assert {t for t, _ in have} <= set(CATALOG), "example directories must be catalog topics"


def test_consecutive_versions_are_backward_and_forward_compatible():
    reports = check_store(STORE)
    assert reports, "at least one record must have two versions"
    for report in reports:
        assert report.ok, report.explain()
    assert_compatible(STORE)


@pytest.mark.parametrize("report", check_store(STORE), ids=lambda r: r.new.name)
def test_compatibility_holds_when_actually_resolving_examples_and_generated_data(report):
    old, new = report.old, report.new
    old_values = list(generate_many(old.parsed, 50))
    new_values = list(generate_many(new.parsed, 50))
    for path in EXAMPLES:
        spec, schema, value = _load_example(path)
        if spec.record == new.name and schema.version in (old.version, new.version):
            (old_values if schema.version == old.version else new_values).append(value)
    assert resolve(old, new, old_values) == [], "backward: new reader on old data"
    assert resolve(new, old, new_values) == [], "forward: old reader on new data"


def _pair(old_fields: list, new_fields: list, tmp: Path):
    def version(fields, n):
        raw = {"type": "record", "name": "R", "namespace": "t", "fields": fields}
        return parse_version(raw, "t.R", n, tmp / f"v{n}.avsc")

    return version(old_fields, 1), version(new_fields, 2)


def test_an_incompatible_pair_is_reported_in_words(tmp_path: Path):
    color = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}
    old, new = _pair(
        [
            {"name": "id", "type": "string"},
            {"name": "color", "type": color},
            {"name": "n", "type": "long"},
        ],
        [
            {"name": "id", "type": "string"},
            {"name": "color", "type": {**color, "symbols": ["RED", "GREEN", "BLUE"]}},
            {"name": "n", "type": "int"},
            {"name": "added", "type": "string"},
        ],
        tmp_path,
    )
    report = check_pair(old, new)
    assert not report.ok
    text = report.explain()
    assert "t.R v1 -> v2 is not fully compatible" in text
    assert "R.added: reader field has no default" in text
    assert "R.n: type changed from long to int" in text
    assert "enum symbols ['BLUE'] are unknown to the reader" in text
    # ... and fastavro agrees when it actually resolves data.
    backward = resolve(old, new, [{"id": "a", "color": "RED", "n": 1}])
    assert backward and "SchemaResolutionError" in backward[0]
    forward = resolve(new, old, [{"id": "a", "color": "BLUE", "n": 1, "added": "x"}])
    assert forward and "BLUE" in forward[0]
    store = SchemaStore.__new__(SchemaStore)
    store.avro_dir, store._versions, store._by_fingerprint = tmp_path, {}, {}
    store.add(old)
    store.add(new)
    with pytest.raises(IncompatibleSchemasError, match="not backward compatible"):
        assert_compatible(store)


def test_a_compatible_evolution_passes_the_checker(tmp_path: Path):
    old, new = _pair(
        [{"name": "id", "type": "string"}, {"name": "n", "type": "int"}],
        [
            {"name": "id", "type": "string"},
            {"name": "n", "type": "int"},
            {"name": "note", "type": ["null", "string"], "default": None},
        ],
        tmp_path,
    )
    assert check_pair(old, new).ok


FORBIDDEN = {"prompt", "completion", "messages", "content", "text", "plaintext", "body", "input"}


def _field_names(schema, seen=None):
    seen = set() if seen is None else seen
    if isinstance(schema, list):
        for branch in schema:
            _field_names(branch, seen)
    elif isinstance(schema, dict):
        for field in schema.get("fields", ()):
            seen.add(field["name"])
            _field_names(field["type"], seen)
        for key in ("items", "values"):
            if key in schema:
                _field_names(schema[key], seen)
    return seen


@pytest.mark.parametrize("name", STORE.names)
def test_no_schema_has_a_plaintext_content_field(name):
    for version in STORE.versions(name):
        fields = _field_names(STORE.get(name, version).parsed)
        assert not fields & FORBIDDEN, f"{name} v{version} has {fields & FORBIDDEN}"


def test_amounts_are_long_nanoton_and_timestamps_are_millis():
    for name in STORE.names:
        for field in STORE.latest(name).raw["fields"]:
            kind = field["type"]
            if "nanoton" in field["name"]:
                assert kind in ("long", ["null", "long"]), f"{name}.{field['name']}"
            if field["name"].endswith("_at"):
                plain = kind[1] if isinstance(kind, list) else kind
                assert plain == {"type": "long", "logicalType": "timestamp-millis"}, name


def test_every_record_has_a_generated_model():
    assert set(STORE.names) <= set(RECORDS)
