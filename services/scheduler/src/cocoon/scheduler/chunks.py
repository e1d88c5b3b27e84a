"""Read (request_id, attempt, seq) off a sealed chunk without decoding its ciphertext.

The scheduler reads `inference.responses` only to see each attempt's first chunk, yet every
chunk of every stream passes by. Decoding the whole record (Avro + pydantic) per chunk would
copy the ciphertext and build a model for nothing, so for the writer version we know the
leading fields are read straight from the Avro binary: `request_id, worker_id` (string),
`attempt` (int), `gateway_id` (string), `seq` (long). Any other writer version is decoded the
ordinary way, so a new SealedChunk version costs speed, never correctness.
"""

from __future__ import annotations

from typing import NamedTuple

from cocoon.core import codec

RECORD = "cocoon.inference.SealedChunk"


class ChunkHead(NamedTuple):
    request_id: str
    attempt: int
    seq: int


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Avro zig-zag varint (int and long) at `pos` -> (value, next position)."""
    shift = result = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise codec.InvalidBodyError("truncated or oversized varint in a sealed chunk")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = _varint(data, pos)
    end = pos + length
    if length < 0 or end > len(data):
        raise codec.InvalidBodyError("string runs past the end of a sealed chunk")
    return data[pos:end], end


def _fast_header() -> bytes | None:
    store = codec.default_store()
    try:
        version = store.get(RECORD, 1)
    except KeyError:
        return None
    fields = [f["name"] for f in version.raw["fields"][:5]]
    # Only if v1 still starts the way this reader assumes (a test pins it too).
    if fields != ["request_id", "worker_id", "attempt", "gateway_id", "seq"]:
        return None
    return version.header


_V1_HEADER = _fast_header()


def chunk_head(data: bytes) -> ChunkHead:
    """Raise `codec.DecodeError` for anything that is not a readable SealedChunk."""
    if _V1_HEADER is not None and data[: codec.HEADER_SIZE] == _V1_HEADER:
        pos = codec.HEADER_SIZE
        raw_id, pos = _string(data, pos)
        _, pos = _string(data, pos)  # worker_id
        attempt, pos = _varint(data, pos)
        _, pos = _string(data, pos)  # gateway_id
        seq, _ = _varint(data, pos)
        try:
            return ChunkHead(raw_id.decode("utf-8"), attempt, seq)
        except UnicodeDecodeError as exc:
            raise codec.InvalidBodyError(f"request_id is not UTF-8: {exc}") from exc
    _, value = codec.decode(data, reader=RECORD)
    return ChunkHead(value["request_id"], value["attempt"], value["seq"])
