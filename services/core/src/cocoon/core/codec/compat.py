"""Schema evolution rules: can data written with one version be read with another?

Two checks, both used in CI (tests/core/test_schemas.py):

* `incompatibilities(writer, reader)`: a static walk over the Avro resolution rules that says, in
  words, what would break (a field added without a default, an enum symbol an old reader lacks...).
* `resolve(writer, reader, values)`: actually writes values with one version and reads them with
  the other through fastavro, so the static walk cannot drift from what the library does.

Backward compatible = the new version reads data written with the old one (consumers upgrade
first). Forward compatible = the old version reads data written with the new one (producers
upgrade first). Cocoon requires both between consecutive versions, so services deploy in any order.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from cocoon.core.codec.store import SchemaStore, SchemaVersion

_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}
_NAMED = ("record", "enum", "fixed")


class IncompatibleSchemasError(Exception):
    """Two versions of a record cannot read each other's data; the message lists every reason."""


def incompatibilities(writer: Any, reader: Any) -> list[str]:
    """Reasons a reader with schema `reader` cannot read data written with `writer` ([] = fine)."""
    problems: list[str] = []
    _check(writer, reader, {}, {}, _short_name(reader), problems)
    return problems


def _check(w: Any, r: Any, wn: dict, rn: dict, path: str, out: list[str]) -> None:
    w, r = _deref(w, wn), _deref(r, rn)
    if isinstance(w, list):  # every branch the writer may pick must be readable
        for branch in w:
            _check(branch, r, wn, rn, f"{path}<{_type_name(branch)}>", out)
        return
    if isinstance(r, list):
        for branch in r:
            trial: list[str] = []
            _check(w, branch, dict(wn), dict(rn), path, trial)
            if not trial:
                _check(w, branch, wn, rn, path, out)  # registers named types consistently
                return
        out.append(
            f"{path}: writer type {_type_name(w)} matches no branch of reader union "
            f"{[_type_name(b) for b in r]}"
        )
        return
    wt, rt = _kind(w), _kind(r)
    if wt != rt:
        if rt not in _PROMOTIONS.get(wt, ()):
            out.append(f"{path}: type changed from {wt} to {rt}, which Avro cannot promote")
        return
    if (
        wt in _NAMED
        and _short_name(w) != _short_name(r)
        and _short_name(w) not in r.get("aliases", ())
    ):
        out.append(f"{path}: {wt} renamed from {w['name']} to {r['name']} without an alias")
        return
    if wt == "record":
        written = {f["name"]: f for f in w["fields"]}
        for field in r["fields"]:
            names = [field["name"], *field.get("aliases", ())]
            source = next((written[n] for n in names if n in written), None)
            if source is None:
                if "default" not in field:
                    out.append(
                        f"{path}.{field['name']}: reader field has no default and the "
                        "writer does not write it (add a default, or keep the field)"
                    )
                continue
            _check(source["type"], field["type"], wn, rn, f"{path}.{field['name']}", out)
    elif wt == "enum":
        missing = [s for s in w["symbols"] if s not in r["symbols"]]
        if missing and "default" not in r:
            out.append(
                f"{path}: enum symbols {missing} are unknown to the reader, which has no "
                "enum default to fall back on"
            )
    elif wt == "fixed" and w["size"] != r["size"]:
        out.append(f"{path}: fixed size changed from {w['size']} to {r['size']}")
    elif wt == "array":
        _check(w["items"], r["items"], wn, rn, f"{path}[]", out)
    elif wt == "map":
        _check(w["values"], r["values"], wn, rn, f"{path}{{}}", out)


def _deref(schema: Any, named: dict) -> Any:
    if isinstance(schema, str):
        return named.get(schema, schema)
    if isinstance(schema, dict) and schema.get("type") in _NAMED:
        named.setdefault(schema["name"], schema)
    return schema


def _kind(schema: Any) -> str:
    return schema if isinstance(schema, str) else schema["type"]


def _type_name(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict) and schema.get("type") in _NAMED:
        return schema["name"]
    return _kind(schema)


def _short_name(schema: Any) -> str:
    return schema["name"].rsplit(".", 1)[-1] if isinstance(schema, dict) else str(schema)


def resolve(writer: SchemaVersion, reader: SchemaVersion, values: Iterable[dict]) -> list[str]:
    """Write each value with `writer`, read it with `reader`; the failures, in words."""
    failures = []
    for index, value in enumerate(values):
        buffer = io.BytesIO()
        schemaless_writer(buffer, writer.parsed, value)
        buffer.seek(0)
        try:
            schemaless_reader(buffer, writer.parsed, reader.parsed)
        except Exception as exc:  # fastavro signals resolution failures with several types
            failures.append(f"value #{index}: {type(exc).__name__}: {exc}")
    return failures


@dataclass(frozen=True)
class PairReport:
    """Compatibility of two consecutive versions of one record."""

    old: SchemaVersion
    new: SchemaVersion
    backward: list[str]  # why the new version cannot read old data
    forward: list[str]  # why the old version cannot read new data

    @property
    def ok(self) -> bool:
        return not self.backward and not self.forward

    def explain(self) -> str:
        head = f"{self.new.name} v{self.old.version} -> v{self.new.version}"
        if self.ok:
            return f"{head}: backward and forward compatible"
        lines = [f"{head} is not fully compatible:"]
        if self.backward:
            lines.append(
                f"  not backward compatible (v{self.new.version} readers cannot read "
                f"v{self.old.version} data):"
            )
            lines += [f"    - {p}" for p in self.backward]
        if self.forward:
            lines.append(
                f"  not forward compatible (v{self.old.version} readers cannot read "
                f"v{self.new.version} data):"
            )
            lines += [f"    - {p}" for p in self.forward]
        return "\n".join(lines)


def check_pair(old: SchemaVersion, new: SchemaVersion) -> PairReport:
    return PairReport(
        old,
        new,
        incompatibilities(old.parsed, new.parsed),
        incompatibilities(new.parsed, old.parsed),
    )


def check_store(store: SchemaStore) -> list[PairReport]:
    """Every pair of consecutive versions of every record in the store."""
    reports = []
    for name in store.names:
        versions = [store.get(name, v) for v in store.versions(name)]
        reports += [check_pair(a, b) for a, b in itertools.pairwise(versions)]
    return reports


def assert_compatible(store: SchemaStore) -> None:
    """Raise `IncompatibleSchemasError` listing every incompatible pair."""
    bad = [r.explain() for r in check_store(store) if not r.ok]
    if bad:
        raise IncompatibleSchemasError("\n".join(bad))
