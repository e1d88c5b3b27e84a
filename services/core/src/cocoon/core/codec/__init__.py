"""Avro single-object encoding for every message on the bus.

    from cocoon.core import codec
    data = codec.encode("cocoon.worker.Heartbeat", {...})      # or codec.encode(model_instance)
    name, value = codec.decode(data)  # latest version of the writer's record
    name, value = codec.decode(data, reader="cocoon.worker.Heartbeat")  # WrongRecordError otherwise

Schemas ship with the code (`schemas/avro/<record>/v<N>.avsc`); see docs/contracts.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cocoon.core.codec.errors import (
    BadMagicError,
    CodecError,
    DecodeError,
    EncodeError,
    InvalidBodyError,
    SchemaError,
    UnknownSchemaError,
    WrongRecordError,
)
from cocoon.core.codec.store import (
    HEADER_SIZE,
    MAGIC,
    SchemaStore,
    SchemaVersion,
    default_store,
)

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "BadMagicError",
    "CodecError",
    "DecodeError",
    "EncodeError",
    "InvalidBodyError",
    "SchemaError",
    "SchemaStore",
    "SchemaVersion",
    "UnknownSchemaError",
    "WrongRecordError",
    "decode",
    "decode_model",
    "default_store",
    "encode",
]


def encode(
    record: Any, value: Mapping[str, Any] | None = None, version: int | None = None
) -> bytes:
    """Encode `value` as the record `record` (a full name), or encode a generated model instance.

    `encode("cocoon.worker.Heartbeat", {...})` or `encode(models.Heartbeat(...))`.
    """
    if value is None and hasattr(record, "avro_name"):
        return default_store().encode(record.avro_name, record.to_avro(), version)
    if value is None:
        raise TypeError("encode(record_name, value) or encode(model_instance)")
    if hasattr(value, "to_avro"):
        value = value.to_avro()
    return default_store().encode(record, value, version)


def decode(
    data: bytes, reader: str | None = None, reader_version: int | None = None
) -> tuple[str, dict[str, Any]]:
    """Decode single-object bytes into (record name, value dict in the reader's version)."""
    return default_store().decode(data, reader, reader_version)


def decode_model(data: bytes, reader: str | None = None):
    """Decode into the generated pydantic model of the record (latest version)."""
    from cocoon.core.codec.models import model_for

    name, value = decode(data, reader)
    return model_for(name).from_avro(value)
