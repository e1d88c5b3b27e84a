"""Records a worker writes to shared topics, signed by its attested Ed25519 key.

Kafka ACLs say who may write a topic, not which worker a record speaks for: any worker (or
anyone else with write access to `worker.heartbeats`) could write a heartbeat keyed as another
worker. So the worker-proxy signs every heartbeat and every outcome it writes with the Ed25519
key of its TRUSTED verdict, and every reader checks the signature against the key in that
worker's current verdict before the record changes anything:

    from cocoon.core.worker_records import ForgedRecord, sign_record, verify_record

    heartbeat = sign_record(identity.keys, models.Heartbeat(...))        # worker-proxy
    try:
        verify_record(message.value, key_of)   # key_of(worker_id) -> bytes | None
    except ForgedRecord as exc:               # a RejectRecord: BusConsumer dead-letters it
        ...                                   # exc.code: an ErrorCode, e.g. unsigned_record

Signed message: `canonical_bytes({"domain": <kind's domain>, "payload": fields})` (see
cocoon.core.crypto.canonical) where `fields` are exactly the kind's field list below (every field
of the record's schema but `signature`: v3's for outcomes, v4's for heartbeats), timestamps as
integer unix milliseconds, doubles as their 8 IEEE-754 big-endian bytes (the canonical encoding
has no floats), absent values as None.
The list is fixed by the domain, not by the Avro version, so a later schema version that adds
fields does not change what old verifiers check; it would get a new domain if those fields
must be signed too.

Outcomes the scheduler reports itself (`reported_by` = `scheduler`: no worker took the request,
a lease expired, a worker went silent) carry no signature: no worker wrote them. See
docs/security.md, "Attributable worker records", for what that leaves open.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cocoon.core.bus.deadletter import RejectRecord
from cocoon.core.codec import models
from cocoon.core.codec.timestamps import epoch_millis
from cocoon.core.contracts import ErrorCode
from cocoon.core.crypto.canonical import sign_canonical, signed_message, verify_canonical
from cocoon.core.crypto.errors import CryptoError
from cocoon.core.crypto.keys import WorkerKeys

# Who reports an outcome no worker wrote (the scheduler's own verdict on a request).
SCHEDULER_REPORTER = "scheduler"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RecordKind:
    """One kind of worker-signed record: its domain and the fields the signature covers."""

    record: str  # Avro full name
    domain: str
    fields: tuple[str, ...]
    times: tuple[str, ...] = ()  # timestamp-millis fields
    doubles: tuple[str, ...] = ()


HEARTBEAT = RecordKind(
    record="cocoon.worker.Heartbeat",
    # v2: the heartbeat's capabilities and context length are signed too (the gateway routes
    # and lists models by them), so the domain changed with them (schema v4).
    domain="cocoon/worker-heartbeat/v2",
    fields=(
        "worker_id",
        "models",
        "state",
        "max_active_requests",
        "active_requests",
        "coefficient",
        "work_topic",
        "seq",
        "sent_at",
        "engine_queue_depth",
        "gpu",
        "avg_request_ms",
        "capabilities",
        "context_length",
    ),
    times=("sent_at",),
    doubles=("avg_request_ms",),
)
OUTCOME = RecordKind(
    record="cocoon.inference.Outcome",
    domain="cocoon/inference-outcome/v1",
    fields=(
        "request_id",
        "attempt",
        "worker_id",
        "model",
        "status",
        "error_code",
        "reported_by",
        "time_to_first_chunk_ms",
        "duration_ms",
        "completion_tokens",
        "finished_at",
        "min_coefficient",
    ),
    times=("finished_at",),
)
KINDS: dict[type, RecordKind] = {models.Heartbeat: HEARTBEAT, models.Outcome: OUTCOME}

# worker id -> the Ed25519 key of its current, unexpired TRUSTED verdict (None: it has none)
KeyLookup = Callable[[str], bytes | None]
Signed = TypeVar("Signed", models.Heartbeat, models.Outcome)


class ForgedRecord(RejectRecord):
    """A worker record nothing vouches for; `code` is the ErrorCode its dead letter carries."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def kind_of(record: models.Heartbeat | models.Outcome) -> RecordKind:
    try:
        return KINDS[type(record)]
    except KeyError:
        raise TypeError(f"not a worker-signed record: {type(record).__name__}") from None


def signed_fields(kind: RecordKind, record: models.Heartbeat | models.Outcome) -> dict[str, Any]:
    """The mapping the signature covers (see the module docs for the encoding)."""
    values = record.model_dump(mode="python")
    out: dict[str, Any] = {}
    for name in kind.fields:
        value = values.get(name)
        if value is None:
            pass
        elif name in kind.times:
            value = epoch_millis(value)
        elif name in kind.doubles:
            value = struct.pack(">d", float(value))
        elif isinstance(value, list | tuple):
            value = [str(item) for item in value]
        out[name] = value
    return out


def record_message(record: models.Heartbeat | models.Outcome) -> bytes:
    """The exact bytes a worker signs, for verifiers with their own Ed25519 code."""
    kind = kind_of(record)
    return signed_message(kind.domain, signed_fields(kind, record))


def sign_record(keys: WorkerKeys, record: Signed) -> Signed:
    """`record` with its `signature` set, by the worker's attested Ed25519 key."""
    kind = kind_of(record)
    # The wire keeps whole milliseconds: sign the times as they will be read back.
    record = record.model_copy(update={t: _whole_millis(getattr(record, t)) for t in kind.times})
    signature = sign_canonical(keys.signing_key, kind.domain, signed_fields(kind, record))
    return record.model_copy(update={"signature": signature})


def _whole_millis(value: datetime) -> datetime:
    return _EPOCH + timedelta(milliseconds=epoch_millis(value))


def needs_signature(record: models.Heartbeat | models.Outcome) -> bool:
    """Every heartbeat; every outcome but those the scheduler reports itself."""
    return not (isinstance(record, models.Outcome) and record.reported_by == SCHEDULER_REPORTER)


def verify_record(record: models.Heartbeat | models.Outcome, key_of: KeyLookup) -> None:
    """Raise `ForgedRecord` unless the worker the record names signed it with its attested key.

    `key_of(worker_id)` gives the Ed25519 key of that worker's current, unexpired TRUSTED
    verdict, as the caller mirrors `attestation.verdicts` (None: it has none).
    """
    if not needs_signature(record):
        return
    kind = kind_of(record)
    what = f"{kind.record.rpartition('.')[2].lower()} of {record.worker_id!r}"
    key = key_of(record.worker_id)
    if key is None:
        raise ForgedRecord(ErrorCode.UNTRUSTED_WORKER, f"{what}: no current TRUSTED verdict")
    if not record.signature:
        raise ForgedRecord(ErrorCode.UNSIGNED_RECORD, f"{what} carries no signature")
    try:
        verify_canonical(key, kind.domain, signed_fields(kind, record), bytes(record.signature))
    except CryptoError:
        raise ForgedRecord(
            ErrorCode.BAD_RECORD_SIGNATURE, f"{what} is not signed by its attested key"
        ) from None


def verify_value(
    record_name: str, value: Mapping[str, Any], key_of: KeyLookup
) -> models.Heartbeat | models.Outcome:
    """`verify_record` for a decoded Avro dict (group-less readers); returns the model."""
    model = models.model_for(record_name).from_avro(dict(value))
    if not isinstance(model, models.Heartbeat | models.Outcome):
        raise TypeError(f"not a worker-signed record: {record_name}")
    verify_record(model, key_of)
    return model
