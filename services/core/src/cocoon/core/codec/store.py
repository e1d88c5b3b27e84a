"""Avro single-object encoding over the versioned schemas in `schemas/avro/`.

Wire format (Avro specification, "Single-object encoding"):

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
            Parsing Canonical Form | Avro binary body

Layout on disk: `schemas/avro/<record full name>/v<N>.avsc`, one file per version. Every version
of every record is loaded; a fingerprint identifies the exact writer version, and the body is read
with Avro schema resolution into the reader's version (the latest unless asked otherwise).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from cocoon.core.codec.errors import (
    BadMagicError,
    EncodeError,
    InvalidBodyError,
    SchemaError,
    UnknownSchemaError,
    WrongRecordError,
)
from cocoon.core.paths import schemas_dir

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.avsc$")


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one record schema."""

    name: str  # Avro full name, e.g. "cocoon.inference.InferenceRequest"
    version: int
    raw: dict[str, Any] = field(repr=False)  # the .avsc as written (docs and all)
    parsed: dict[str, Any] = field(repr=False)  # fastavro's parsed form
    canonical: str = field(repr=False)  # Parsing Canonical Form
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO, exactly as on the wire
    path: Path

    @property
    def header(self) -> bytes:
        return MAGIC + self.fingerprint


def parse_version(raw: dict[str, Any], name: str, version: int, path: Path) -> SchemaVersion:
    # Each version is parsed on its own: versions of one record share names by design.
    parsed = parse_schema(raw, named_schemas={})
    if not isinstance(parsed, dict):
        raise SchemaError(f"{path}: expected record {name}, found {parsed!r}")
    if parsed.get("type") != "record" or parsed.get("name") != name:
        raise SchemaError(f"{path}: expected record {name}, found {parsed.get('name')!r}")
    canonical = to_parsing_canonical_form(parsed)
    digest = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    return SchemaVersion(name, version, raw, parsed, canonical, digest, path)


class SchemaStore:
    """Every version of every record in a schemas directory, addressable by name or fingerprint."""

    def __init__(self, avro_dir: Path | None = None) -> None:
        self.avro_dir = Path(avro_dir) if avro_dir else schemas_dir() / "avro"
        self._versions: dict[str, dict[int, SchemaVersion]] = {}
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        if not self.avro_dir.is_dir():
            raise SchemaError(f"no schemas directory at {self.avro_dir}")
        for record_dir in sorted(p for p in self.avro_dir.iterdir() if p.is_dir()):
            for path in sorted(record_dir.glob("*.avsc")):
                match = _VERSION_FILE.match(path.name)
                if not match:
                    raise SchemaError(f"{path}: schema files are named v<N>.avsc")
                raw = json.loads(path.read_text())
                self.add(parse_version(raw, record_dir.name, int(match.group(1)), path))

    def add(self, schema: SchemaVersion) -> None:
        versions = self._versions.setdefault(schema.name, {})
        if schema.version in versions:
            raise SchemaError(f"{schema.name} v{schema.version} is defined twice")
        clash = self._by_fingerprint.get(schema.fingerprint)
        if clash is not None:
            raise SchemaError(
                f"{schema.name} v{schema.version} has the same canonical form as "
                f"{clash.name} v{clash.version}: a new version must change the schema"
            )
        versions[schema.version] = schema
        self._by_fingerprint[schema.fingerprint] = schema

    # -- lookups -------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, name: str) -> list[int]:
        return sorted(self._record(name))

    def get(self, name: str, version: int | None = None) -> SchemaVersion:
        versions = self._record(name)
        if version is None:
            return versions[max(versions)]
        try:
            return versions[version]
        except KeyError:
            raise SchemaError(f"{name} has no version {version}: {sorted(versions)}") from None

    def latest(self, name: str) -> SchemaVersion:
        return self.get(name)

    def by_fingerprint(self, digest: bytes) -> SchemaVersion | None:
        return self._by_fingerprint.get(bytes(digest))

    def _record(self, name: str) -> dict[int, SchemaVersion]:
        try:
            return self._versions[name]
        except KeyError:
            raise SchemaError(f"unknown record {name!r}; known: {', '.join(self.names)}") from None

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, name: str, value: Mapping[str, Any], version: int | None = None) -> bytes:
        """Single-object encoding of `value` with `name`'s schema (latest version by default)."""
        schema = self.get(name, version)
        out = io.BytesIO()
        out.write(schema.header)
        try:
            # strict_allow_default: unknown fields are an error (typos), omitted ones need defaults.
            schemaless_writer(out, schema.parsed, dict(value), strict_allow_default=True)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"cannot encode {name} v{schema.version}: {exc}") from exc
        return out.getvalue()

    def writer_of(self, data: bytes) -> SchemaVersion:
        """The writer schema named by a single-object header."""
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            shown = bytes(data[:HEADER_SIZE]).hex() or "empty"
            raise BadMagicError(
                f"not Avro single-object encoding (expected C3 01 + 8-byte fingerprint, "
                f"got {len(data)} bytes starting {shown})"
            )
        digest = bytes(data[2:HEADER_SIZE])
        writer = self.by_fingerprint(digest)
        if writer is None:
            raise UnknownSchemaError(
                f"writer schema fingerprint {digest.hex()} is not in {self.avro_dir}; "
                "the producer runs schemas this code does not ship",
                digest,
            )
        return writer

    def decode(
        self, data: bytes, reader: str | None = None, reader_version: int | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Read single-object bytes into (record name, value) in the reader's schema version.

        `reader` is the record the caller expects (default: whatever was written); the value is
        resolved from the writer's version to `reader_version` (default: the latest).
        """
        writer = self.writer_of(data)
        expected = reader or writer.name
        if writer.name != expected:
            raise WrongRecordError(
                f"expected a {expected} record, got {writer.name} v{writer.version}",
                actual=writer.name,
                expected=expected,
            )
        target = self.get(expected, reader_version)
        body = io.BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            value = _read(body, writer, target)
        except Exception as exc:  # fastavro raises EOFError, IndexError, UnicodeError, ...
            raise InvalidBodyError(
                f"{writer.name} v{writer.version} body does not decode: "
                f"{type(exc).__name__}: {exc or 'truncated'}"
            ) from exc
        trailing = len(data) - body.tell()
        if trailing:
            raise InvalidBodyError(
                f"{writer.name} v{writer.version} body has {trailing} trailing bytes"
            )
        return writer.name, value


def _read(body: io.BytesIO, writer: SchemaVersion, reader: SchemaVersion) -> dict[str, Any]:
    # Every schema in the store is a record (parse_version), so the datum is a dict.
    if writer is reader:
        return cast(dict[str, Any], schemaless_reader(body, writer.parsed, None))
    return cast(dict[str, Any], schemaless_reader(body, writer.parsed, reader.parsed))


@cache
def default_store() -> SchemaStore:
    """The store over the project's `schemas/avro/` (loaded once per process)."""
    return SchemaStore()
