"""Wire vocabulary that is not an Avro enum: the error codes of `schemas/error_codes.yaml`.

`Outcome.error_code` and `SealedChunk.error_code` are strings on the wire (so a code can be added
without a schema version, and an old reader is never broken by a new one); the codes themselves
are declared here and generated as `cocoon.core.contracts.ErrorCode`.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from cocoon.core.catalog import SERVICES
from cocoon.core.codec.store import SchemaStore, default_store
from cocoon.core.paths import schemas_dir


class Code(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    reported_by: tuple[str, ...]
    description: str


class Vocabulary(BaseModel):
    """A set of codes and the record fields (`<record full name>.<field>`) that carry them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    fields: tuple[str, ...]
    codes: tuple[Code, ...]


def load_error_codes(
    path: Path | str | None = None, store: SchemaStore | None = None
) -> Vocabulary:
    """The error-code vocabulary, checked: unique codes, known services, string fields."""
    file = Path(path) if path else schemas_dir() / "error_codes.yaml"
    try:
        vocabulary = Vocabulary(**yaml.safe_load(file.read_text()))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{file}: {exc}") from exc
    codes = [c.code for c in vocabulary.codes]
    if len(codes) != len(set(codes)):
        raise ValueError(f"{file}: a code is declared twice")
    for code in vocabulary.codes:
        if unknown := set(code.reported_by) - SERVICES:
            raise ValueError(f"{file}: {code.code} is reported by unknown {sorted(unknown)}")
    store = store or default_store()
    for name in vocabulary.fields:
        record, _, field = name.rpartition(".")
        fields = {f["name"]: f["type"] for f in store.latest(record).raw["fields"]}
        if fields.get(field) not in ("string", ["null", "string"]):
            raise ValueError(f"{file}: {name} is not a string field of {record}")
    return vocabulary
