"""The gateway believes a heartbeat or an outcome only when the named worker's attested key
signed it (issue 12): records decoded from the wire, verdicts signed by a real attestation key."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.core import codec
from cocoon.core.bus import BusProducer
from cocoon.core.bus.broadcast import BroadcastRecord
from cocoon.core.codec import models
from cocoon.core.contracts import ErrorCode, Topic
from cocoon.core.crypto.keys import WorkerKeys
from cocoon.core.verdicts import key_id, verdict_message
from cocoon.core.worker_records import sign_record
from cocoon.gateway.api import EndpointNotServed, InferenceRequest, UnknownModel
from cocoon.gateway.api.backend import Endpoint
from cocoon.gateway.models import NetworkPrices, model_listing
from cocoon.gateway.pipeline import KafkaBackend
from cocoon.gateway.trust import verdict_checker
from cocoon.gateway.workers import WorkerDirectory

MODEL = "m"


def _ms(offset_s: float = 0) -> datetime:
    now = datetime.now(UTC) + timedelta(seconds=offset_s)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _wire(topic: str, value: models.AvroModel) -> BroadcastRecord:
    """The record as a BroadcastReader hands it over: encoded, then decoded."""
    name, decoded = codec.decode(codec.encode(value))
    key = getattr(value, "worker_id", None)
    return BroadcastRecord(topic, key, name, decoded, 0, [])


def _verdict(
    attestor: Ed25519PrivateKey, worker_id: str, keys: WorkerKeys, model: str = MODEL
) -> models.Verdict:
    public = attestor.public_key().public_bytes_raw()
    unsigned = models.Verdict(
        verdict_id=f"v-{uuid.uuid4().hex[:6]}",
        worker_id=worker_id,
        status="TRUSTED",
        models=[model],
        signing_key=keys.public.signing_key,
        hpke_public_key=keys.public.hpke_mlkem768_x25519,
        hpke_suite="mlkem768-x25519",
        hpke_x25519=keys.public.hpke_x25519,
        registry_version=1,
        issued_at=_ms(-60),
        expires_at=_ms(3600),
        attestor_key_id=key_id(public),
        signature=b"\x00" * 64,
    )
    return unsigned.model_copy(update={"signature": attestor.sign(verdict_message(unsigned))})


def _heartbeat(worker_id: str, model: str = MODEL, **announced: object) -> models.Heartbeat:
    """`announced`: capabilities, context_length, coefficient (default 1000)."""
    fields = {"coefficient": 1000, **announced}
    return models.Heartbeat(
        worker_id=worker_id,
        models=[model],
        state="READY",
        max_active_requests=1,
        active_requests=0,
        work_topic=f"work.{worker_id}",
        seq=1,
        sent_at=_ms(),
        **fields,  # type: ignore[arg-type]
    )


def _failed(worker_id: str) -> models.Outcome:
    return models.Outcome(
        request_id=str(uuid.uuid4()),
        attempt=1,
        worker_id=worker_id,
        model=MODEL,
        status="FAILED",
        error_code=ErrorCode.ENGINE_ERROR,
        reported_by="worker-proxy",
        duration_ms=1,
        completion_tokens=0,
        finished_at=_ms(),
    )


def _directory() -> tuple[WorkerDirectory, WorkerKeys, WorkerKeys]:
    attestor = Ed25519PrivateKey.generate()
    real, other = WorkerKeys.generate(), WorkerKeys.generate()
    public = attestor.public_key().public_bytes_raw().hex()
    directory = WorkerDirectory(verdict_checker(public, None))
    for worker_id, keys in (("w-real", real), ("w-other", other)):
        directory.on_record(_wire(Topic.ATTESTATION_VERDICTS, _verdict(attestor, worker_id, keys)))
    assert directory.trusted("w-real") and directory.trusted("w-other")
    return directory, real, other


def test_only_the_workers_own_heartbeats_keep_it_alive():
    directory, real, other = _directory()
    forged = _heartbeat("w-real")
    directory.on_record(_wire(Topic.WORKER_HEARTBEATS, forged))  # unsigned
    directory.on_record(_wire(Topic.WORKER_HEARTBEATS, sign_record(other, forged)))
    directory.on_record(_wire(Topic.WORKER_HEARTBEATS, sign_record(real, _heartbeat("w-gone"))))
    assert directory.live_workers() == []
    assert directory.refused == {
        ErrorCode.UNSIGNED_RECORD: 1,
        ErrorCode.BAD_RECORD_SIGNATURE: 1,
        ErrorCode.UNTRUSTED_WORKER: 1,
    }

    directory.on_record(_wire(Topic.WORKER_HEARTBEATS, sign_record(real, forged)))
    assert [w.worker_id for w in directory.live_workers()] == ["w-real"]


def test_an_outcome_in_another_workers_name_is_not_vouched_for():
    directory, real, other = _directory()
    failed = _failed("w-real")
    assert not directory.vouched(_wire(Topic.INFERENCE_OUTCOMES, failed))
    assert not directory.vouched(_wire(Topic.INFERENCE_OUTCOMES, sign_record(other, failed)))
    altered = sign_record(real, failed).model_copy(update={"status": "SUCCEEDED"})
    assert not directory.vouched(_wire(Topic.INFERENCE_OUTCOMES, altered))
    assert directory.vouched(_wire(Topic.INFERENCE_OUTCOMES, sign_record(real, failed)))
    # The scheduler's own outcomes carry no worker signature.
    ours = failed.model_copy(update={"reported_by": "scheduler", "worker_id": ""})
    assert directory.vouched(_wire(Topic.INFERENCE_OUTCOMES, ours))


# -- what heartbeats announce: capabilities, context length, coefficient --------------------------


def _two_models() -> WorkerDirectory:
    """A chat worker and an embedding worker, each announcing what it serves (signed)."""
    attestor = Ed25519PrivateKey.generate()
    directory = WorkerDirectory(
        verdict_checker(attestor.public_key().public_bytes_raw().hex(), None)
    )
    announced = {
        "w-chat": (
            "chat-m",
            {"capabilities": ["CHAT", "TOOLS"], "context_length": 2048, "coefficient": 1200},
        ),
        "w-emb": ("emb-m", {"capabilities": ["EMBEDDINGS"], "context_length": 256}),
    }
    for worker_id, (model, says) in announced.items():
        keys = WorkerKeys.generate()
        verdict = _verdict(attestor, worker_id, keys, model)
        directory.on_record(_wire(Topic.ATTESTATION_VERDICTS, verdict))
        beat = sign_record(keys, _heartbeat(worker_id, model, **says))
        directory.on_record(_wire(Topic.WORKER_HEARTBEATS, beat))
    return directory


def test_models_are_listed_with_what_their_workers_announce_and_the_registry_prices():
    prices = NetworkPrices(100, completion_bps=20_000, worker_coefficients={"w-emb": 1500})
    listed = {m.id: m for m in model_listing(_two_models(), prices)}
    chat, emb = listed["chat-m"], listed["emb-m"]
    assert (chat.capabilities, chat.context_length, chat.min_coefficient) == (
        ("chat", "tools"),
        2048,
        1200,
    )
    assert chat.pricing == {"prompt": 120.0, "cached_prompt": 120.0, "completion": 240.0}
    # The registry's coefficient for a worker wins over its own (as the scheduler places).
    assert (emb.capabilities, emb.context_length, emb.min_coefficient) == (
        ("embeddings",),
        256,
        1500,
    )
    assert emb.pricing is not None and emb.pricing["prompt"] == 150.0
    assert model_listing(_two_models(), None)[0].pricing is None


def test_an_endpoint_a_model_does_not_serve_is_a_400_that_names_the_models_that_do():
    backend = KafkaBackend(cast(BusProducer, None), _two_models(), gateway_id="gw")

    def request(endpoint: Endpoint, model: str) -> InferenceRequest:
        return InferenceRequest(str(uuid.uuid4()), endpoint, model, {}, 1, 1000, 10, False, 1)

    with pytest.raises(EndpointNotServed) as refused:
        backend.check_model(request("embeddings", "chat-m"))
    assert refused.value.status == 400 and refused.value.param == "model"
    assert "/v1/embeddings" in str(refused.value) and "emb-m" in str(refused.value)
    with pytest.raises(EndpointNotServed):
        backend.check_model(request("chat.completions", "emb-m"))
    with pytest.raises(UnknownModel):
        backend.check_model(request("embeddings", "nobody-serves-it"))
    backend.check_model(request("embeddings", "emb-m"))
    backend.check_model(request("completions", "chat-m"))


def test_capabilities_are_signed_a_changed_claim_is_refused():
    attestor = Ed25519PrivateKey.generate()
    directory = WorkerDirectory(
        verdict_checker(attestor.public_key().public_bytes_raw().hex(), None)
    )
    keys = WorkerKeys.generate()
    directory.on_record(_wire(Topic.ATTESTATION_VERDICTS, _verdict(attestor, "w-1", keys)))
    signed = sign_record(keys, _heartbeat("w-1", capabilities=["CHAT"]))
    claimed = signed.model_copy(update={"capabilities": ["CHAT", "EMBEDDINGS"]})
    directory.on_record(_wire(Topic.WORKER_HEARTBEATS, claimed))
    assert directory.refused == {ErrorCode.BAD_RECORD_SIGNATURE: 1}
    assert directory.model_capabilities(MODEL) == frozenset()
