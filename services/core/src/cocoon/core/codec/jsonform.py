"""A readable JSON form of Avro values: the checked-in examples, and tools that print records.

Plain JSON as a person would write it (no Avro-JSON union wrappers): `bytes` are base64 strings,
timestamps are integers (epoch milliseconds) or ISO-8601 strings, unions are just the value.
The schema guides the conversion, so the same document always means the same bytes.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

from cocoon.core.codec.errors import EncodeError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PRIMITIVE_JSON: dict[str, type | tuple[type, ...]] = {
    "null": type(None),
    "boolean": bool,
    "string": str,
    "int": int,
    "long": int,
    "float": (int, float),
    "double": (int, float),
}


def from_json(schema: Any, value: Any, named: dict[str, Any] | None = None, path: str = "") -> Any:
    """Turn the readable JSON form into a value fastavro can write with `schema` (parsed)."""
    named = {} if named is None else named
    if isinstance(schema, str):
        if schema in named:
            return from_json(named[schema], value, named, path)
        return _primitive(schema, value, path)
    if isinstance(schema, list):
        return _union(schema, value, named, path)
    kind = schema["type"]
    if kind in ("record", "enum", "fixed"):
        named.setdefault(schema["name"], schema)
    if kind == "record":
        if not isinstance(value, dict):
            raise EncodeError(f"{path or schema['name']}: expected an object, got {value!r}")
        known = {f["name"] for f in schema["fields"]}
        unknown = sorted(set(value) - known)
        if unknown:
            raise EncodeError(f"{path or schema['name']}: unknown fields {unknown}")
        out = {}
        for fld in schema["fields"]:
            where = f"{path}.{fld['name']}".lstrip(".")
            if fld["name"] in value:
                out[fld["name"]] = from_json(fld["type"], value[fld["name"]], named, where)
            elif "default" in fld:  # omitted optional fields take their Avro default
                out[fld["name"]] = _default(fld["type"], fld["default"], named, where)
            else:
                raise EncodeError(f"{where}: missing, and the field has no default")
        return out
    if kind == "array":
        return [from_json(schema["items"], v, named, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "map":
        return {k: from_json(schema["values"], v, named, f"{path}.{k}") for k, v in value.items()}
    if kind == "enum":
        if value not in schema["symbols"]:
            raise EncodeError(f"{path}: {value!r} is not one of {schema['symbols']}")
        return value
    if kind == "fixed":
        return _bytes(value, path)
    logical = schema.get("logicalType")
    if logical == "timestamp-millis" and isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    if logical == "timestamp-millis" and isinstance(value, int) and not isinstance(value, bool):
        # Exact (no float): what fastavro gives back when it reads the value.
        return _EPOCH + timedelta(milliseconds=value)
    return from_json(kind, value, named, path)


def to_json(schema: Any, value: Any, named: dict[str, Any] | None = None) -> Any:
    """The readable JSON form of a decoded value (inverse of `from_json`)."""
    named = {} if named is None else named
    if isinstance(schema, str):
        if schema in named:
            return to_json(named[schema], value, named)
        if schema in ("bytes",):
            return base64.b64encode(value).decode()
        return value
    if isinstance(schema, list):
        if value is None:
            return None
        branch = _pick_branch(schema, value, named, decoded=True)
        return to_json(branch, value, named)
    kind = schema["type"]
    if kind in ("record", "enum", "fixed"):
        named.setdefault(schema["name"], schema)
    if kind == "record":
        return {
            f["name"]: to_json(f["type"], value.get(f["name"]), named) for f in schema["fields"]
        }
    if kind == "array":
        return [to_json(schema["items"], v, named) for v in value]
    if kind == "map":
        return {k: to_json(schema["values"], v, named) for k, v in value.items()}
    if kind == "fixed":
        return base64.b64encode(value).decode()
    if isinstance(value, datetime):
        return (value - _EPOCH) // timedelta(milliseconds=1)
    return to_json(kind, value, named)


def _default(schema: Any, default: Any, named: dict[str, Any], path: str) -> Any:
    # Avro defaults are JSON in the schema's own convention (bytes as ISO-8859-1 text).
    first = schema[0] if isinstance(schema, list) else schema
    if first == "bytes" and isinstance(default, str):
        return default.encode("latin-1")
    if default is None:
        return None
    return from_json(first, default, named, path)


def _primitive(kind: str, value: Any, path: str) -> Any:
    if kind == "bytes":
        return _bytes(value, path)
    expected = _PRIMITIVE_JSON.get(kind)
    bad_bool = isinstance(value, bool) and kind != "boolean"
    if expected is None or not isinstance(value, expected) or bad_bool:
        raise EncodeError(f"{path}: expected {kind}, got {value!r}")
    return value


def _bytes(value: Any, path: str) -> bytes:
    if not isinstance(value, str):
        raise EncodeError(f"{path}: expected base64 text for bytes, got {value!r}")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise EncodeError(f"{path}: not valid base64: {exc}") from exc


def _union(branches: list, value: Any, named: dict[str, Any], path: str) -> Any:
    if value is None and "null" in branches:
        return None
    branch = _pick_branch(branches, value, named, decoded=False)
    if branch is None:
        raise EncodeError(f"{path}: {value!r} matches none of {branches}")
    return from_json(branch, value, named, path)


def _pick_branch(branches: list, value: Any, named: dict[str, Any], *, decoded: bool) -> Any:
    for branch in branches:
        if branch == "null":
            continue
        try:
            if decoded:
                to_json(branch, value, dict(named))
            else:
                from_json(branch, value, dict(named))
        except (EncodeError, TypeError, ValueError, AttributeError, KeyError):
            continue
        return branch
    return None
