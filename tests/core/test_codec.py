"""Single-object encoding: header layout, fingerprints, resolution, and every way bytes go bad."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cocoon.core import codec
from cocoon.core.codec import models
from cocoon.core.codec.store import MAGIC, SchemaStore

HB = "cocoon.worker.Heartbeat"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def _rabin(data: bytes) -> int:
    # CRC-64-AVRO as the Avro specification spells it out, independent of fastavro.
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def heartbeat(**overrides) -> dict:
    value = {
        "worker_id": "w-1",
        "models": ["m"],
        "state": "READY",
        "max_active_requests": 4,
        "active_requests": 1,
        "coefficient": 1000,
        "work_topic": "work.w-1",
        "seq": 7,
        "sent_at": NOW,
    }
    return {**value, **overrides}


def test_rabin_matches_the_avro_reference_value():
    # The Avro project's schema-tests.txt lists 7195948357588979594 for the schema "null".
    assert _rabin(b'"null"') == 7195948357588979594


def test_header_is_magic_then_little_endian_fingerprint_of_canonical_form():
    data = codec.encode(HB, heartbeat())
    schema = codec.default_store().latest(HB)
    assert data[:2] == b"\xc3\x01" == MAGIC
    assert struct.unpack("<Q", data[2:10])[0] == _rabin(schema.canonical.encode())
    assert schema.version == 4  # v3 carries the signature, v4 the capabilities it covers


def test_round_trip_and_model_round_trip():
    data = codec.encode(HB, heartbeat(gpu="H100"))
    name, value = codec.decode(data)
    assert name == HB
    assert value["gpu"] == "H100" and value["sent_at"] == NOW
    model = codec.decode_model(data)
    assert isinstance(model, models.Heartbeat)
    assert codec.encode(model) == data


def test_reader_decodes_a_record_written_with_an_older_version():
    data = codec.encode(HB, heartbeat(), version=1)
    store = codec.default_store()
    assert data[2:10] == store.get(HB, 1).fingerprint != store.get(HB, 2).fingerprint
    name, value = codec.decode(data, reader=HB)
    assert name == HB
    # Fields new in v2 take their defaults.
    assert value["gpu"] is None and value["engine_queue_depth"] is None
    assert value["worker_id"] == "w-1"


def test_old_reader_reads_newer_data_and_unknown_enum_symbols_fall_back():
    data = codec.encode(HB, heartbeat(state="STARTING", gpu="H100"))
    _, value = codec.decode(data, reader=HB, reader_version=1)
    assert value["state"] == "UNKNOWN"
    assert "gpu" not in value


def test_garbage_is_bad_magic():
    with pytest.raises(codec.BadMagicError) as err:
        codec.decode(b"hello world")
    assert err.value.reason == "BAD_MAGIC"
    with pytest.raises(codec.BadMagicError):
        codec.decode(b"")
    with pytest.raises(codec.BadMagicError):
        codec.decode(MAGIC + b"\x00\x01")  # header cut short


def test_unknown_fingerprint():
    data = codec.encode(HB, heartbeat())
    forged = MAGIC + b"\x00" * 8 + data[10:]
    with pytest.raises(codec.UnknownSchemaError) as err:
        codec.decode(forged)
    assert err.value.fingerprint == b"\x00" * 8
    assert err.value.reason == "UNKNOWN_SCHEMA"


def test_truncated_body_and_trailing_bytes_are_invalid_body():
    data = codec.encode(HB, heartbeat())
    with pytest.raises(codec.InvalidBodyError) as err:
        codec.decode(data[:-5])
    assert err.value.reason == "INVALID_BODY"
    with pytest.raises(codec.InvalidBodyError, match="trailing"):
        codec.decode(data + b"\x00")


def test_wrong_record_type():
    data = codec.encode(HB, heartbeat())
    with pytest.raises(codec.WrongRecordError) as err:
        codec.decode(data, reader="cocoon.inference.InferenceRequest")
    assert (err.value.actual, err.value.expected) == (HB, "cocoon.inference.InferenceRequest")
    assert err.value.reason == "WRONG_RECORD"


def test_encode_rejects_unknown_fields_missing_fields_and_wrong_types():
    with pytest.raises(codec.EncodeError, match="more fields"):
        codec.encode(HB, heartbeat(typo=1))
    missing = heartbeat()
    del missing["worker_id"]
    with pytest.raises(codec.EncodeError):
        codec.encode(HB, missing)
    with pytest.raises(codec.EncodeError):
        codec.encode(HB, heartbeat(seq="seven"))
    with pytest.raises(codec.SchemaError, match="unknown record"):
        codec.encode("cocoon.nope.Nothing", {})


def test_store_refuses_a_version_that_does_not_change_the_schema(tmp_path: Path):
    record = tmp_path / "avro" / "t.R"
    record.mkdir(parents=True)
    schema = {"type": "record", "name": "R", "namespace": "t", "fields": []}
    (record / "v1.avsc").write_text(json.dumps(schema))
    (record / "v2.avsc").write_text(json.dumps({**schema, "doc": "docs do not count"}))
    with pytest.raises(codec.SchemaError, match="same canonical form"):
        SchemaStore(tmp_path / "avro")


def test_store_refuses_a_file_whose_record_name_differs_from_its_directory(tmp_path: Path):
    record = tmp_path / "avro" / "t.Other"
    record.mkdir(parents=True)
    schema = {"type": "record", "name": "R", "namespace": "t", "fields": []}
    (record / "v1.avsc").write_text(json.dumps(schema))
    with pytest.raises(codec.SchemaError, match=r"expected record t\.Other"):
        SchemaStore(tmp_path / "avro")


_text = st.text(max_size=20)
_int32 = st.integers(-(2**31), 2**31 - 1)
_int64 = st.integers(-(2**63), 2**63 - 1)
_millis = st.integers(0, 4_102_444_800_000).map(lambda ms: datetime.fromtimestamp(ms / 1000, UTC))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    worker_id=_text,
    names=st.lists(_text, max_size=4),
    state=st.sampled_from(["UNKNOWN", "READY", "DRAINING", "DISABLED", "STARTING"]),
    numbers=st.tuples(_int32, _int32, _int32, _int64),
    sent_at=_millis,
    gpu=st.none() | _text,
    queue=st.none() | _int32,
    avg=st.none() | st.floats(allow_nan=False),
    version=st.sampled_from([1, 2]),
)
def test_property_round_trip_any_heartbeat(
    worker_id, names, state, numbers, sent_at, gpu, queue, avg, version
):
    value = heartbeat(
        worker_id=worker_id,
        models=names,
        state=state if version == 2 or state != "STARTING" else "READY",
        max_active_requests=numbers[0],
        active_requests=numbers[1],
        coefficient=numbers[2],
        seq=numbers[3],
        sent_at=sent_at,
    )
    if version == 2:
        value.update(gpu=gpu, engine_queue_depth=queue, avg_request_ms=avg)
    data = codec.encode(HB, value, version=version)
    name, back = codec.decode(data, reader=HB, reader_version=version)
    assert name == HB and back == value
    # Any strict prefix of a valid record is rejected, never misread.
    cut = len(data) - 1
    with pytest.raises(codec.DecodeError):
        codec.decode(data[:cut])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_property_random_bytes_never_decode_silently(data):
    try:
        codec.decode(data)
    except codec.DecodeError:
        return
    # The only way random bytes decode is a valid header of a known schema plus a valid body.
    assert data[:2] == MAGIC


def test_epoch_millis_takes_times_and_integers_only():
    from datetime import UTC, datetime, timedelta, timezone

    from cocoon.core.codec.timestamps import epoch_millis

    aware = datetime(2026, 11, 25, 1, 2, 3, 456000, tzinfo=UTC)
    assert epoch_millis(aware) == 1795568523456
    assert epoch_millis(aware.astimezone(timezone(timedelta(hours=5)))) == 1795568523456
    assert epoch_millis(aware.replace(tzinfo=None)) == 1795568523456  # naive means UTC
    assert epoch_millis(1795568523456) == 1795568523456
    for bad in (True, 1.5, "1795568523456", None):
        with pytest.raises(TypeError, match="is not a time"):
            epoch_millis(bad)
