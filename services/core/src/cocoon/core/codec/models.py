"""Pydantic models generated from the latest version of every `.avsc`, at import time.

The schemas are the only definition of a message; these classes are derived from them, so the
two can never disagree. Use them for type-checked construction and access:

    from cocoon.core.codec import models
    req = models.InferenceRequest(request_id="r-1", ...)
    models.RequestChannel.HTTP          # enums are StrEnums; fields hold the plain string
    codec.encode(req)                   # or req.to_avro() for the plain dict

Every record class is available as `models.<SimpleName>` and `model_for("<full.name>")`.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from cocoon.core.codec.store import SchemaStore, default_store

_PRIMITIVES: dict[str, Any] = {
    "null": type(None),
    "boolean": bool,
    "int": int,
    "long": int,
    "float": float,
    "double": float,
    "string": str,
    "bytes": bytes,
}


class AvroModel(BaseModel):
    """Base of every generated record model."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=True)

    avro_name: ClassVar[str]
    avro_version: ClassVar[int]

    def to_avro(self) -> dict[str, Any]:
        """The plain dict the codec writes (nested models become dicts too)."""
        return self.model_dump(mode="python")

    @classmethod
    def from_avro(cls, value: dict[str, Any]):
        return cls.model_validate(value)


class _Builder:
    def __init__(self) -> None:
        self.named: dict[str, Any] = {}  # full name -> python type
        self.enums: dict[str, type[enum.StrEnum]] = {}
        self.records: dict[str, type[AvroModel]] = {}

    def type_of(self, schema: Any, version: int) -> Any:
        if isinstance(schema, str):
            if schema in self.named:
                return self.named[schema]
            return _PRIMITIVES[schema]
        if isinstance(schema, list):
            branches = [self.type_of(b, version) for b in schema]
            non_null = [b for b in branches if b is not type(None)]
            inner = non_null[0] if len(non_null) == 1 else Union[tuple(non_null)]  # noqa: UP007
            return Optional[inner] if len(non_null) < len(branches) else inner  # noqa: UP045
        kind = schema["type"]
        if kind == "record":
            return self.record(schema, version)
        if kind == "enum":
            known = self.enums.get(schema["name"])
            if known is not None:  # the same enum shared by several records (AccountKind)
                if [m.value for m in known] != list(schema["symbols"]):
                    raise ValueError(f"enum {schema['name']} is defined with different symbols")
                return self.named[schema["name"]]
            members = {s: s for s in schema["symbols"]}
            cls = enum.StrEnum(_simple(schema["name"]), members)
            self.enums[schema["name"]] = cls
            # Fields accept and hold the symbol strings; the StrEnum is there for callers.
            self.named[schema["name"]] = Literal[tuple(schema["symbols"])]
            return self.named[schema["name"]]
        if kind == "fixed":
            self.named[schema["name"]] = bytes
            return bytes
        if kind == "array":
            return list[self.type_of(schema["items"], version)]
        if kind == "map":
            return dict[str, self.type_of(schema["values"], version)]
        if schema.get("logicalType") in ("timestamp-millis", "timestamp-micros"):
            return datetime
        return self.type_of(kind, version)

    def record(self, schema: dict[str, Any], version: int) -> type[AvroModel]:
        if schema["name"] in self.records:
            return self.records[schema["name"]]
        fields: dict[str, Any] = {}
        for field in schema["fields"]:
            annotation = self.type_of(field["type"], version)
            if "default" in field:
                default = field["default"]
                if isinstance(default, list | dict):
                    value = Field(default_factory=lambda d=default: type(d)(d))
                else:
                    value = Field(default=_default(default, annotation))
            else:
                value = Field()
            value.description = field.get("doc")
            fields[field["name"]] = (annotation, value)
        model = create_model(
            _simple(schema["name"]), __base__=AvroModel, __doc__=schema.get("doc"), **fields
        )
        model.avro_name = schema["name"]
        model.avro_version = version
        model.__module__ = __name__
        self.named[schema["name"]] = model
        self.records[schema["name"]] = model
        return model


def _default(default: Any, annotation: Any) -> Any:
    # Avro writes bytes defaults as ISO-8859-1 strings.
    if annotation is bytes and isinstance(default, str):
        return default.encode("latin-1")
    return default


def _simple(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def build_models(store: SchemaStore) -> tuple[dict[str, type[AvroModel]], dict[str, type]]:
    """Model classes for the latest version of every record: (records, enums) by full name."""
    builder = _Builder()
    for name in store.names:
        latest = store.latest(name)
        builder.type_of(latest.parsed, latest.version)
    return builder.records, builder.enums


RECORDS, ENUMS = build_models(default_store())


def model_for(name: str) -> type[AvroModel]:
    """The model class of a record full name."""
    return RECORDS[name]


def _export() -> None:
    exported: dict[str, Any] = {}
    for full, cls in [*RECORDS.items(), *ENUMS.items()]:
        simple = _simple(full)
        if simple in exported and exported[simple] is not cls:
            raise RuntimeError(f"two schema types are both called {simple}; rename one")
        exported[simple] = cls
    globals().update(exported)


_export()


def __getattr__(name: str) -> Any:  # for linters: generated names resolve at runtime
    raise AttributeError(f"no generated model or enum called {name!r}")
