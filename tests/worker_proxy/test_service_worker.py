"""The worker-proxy on the real broker with the real llama.cpp engine.

The tests play the gateway: seal a request to the worker's keys (taken from the Evidence it
published), put a WorkItem on its work topic, read the sealed chunks, receipt and outcome back
from the raw topics and open them with the response key. Nothing here mocks Kafka, crypto or
the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from cocoon.attestation.claims import Claims
from cocoon.attestation.collateral import BundleSource
from cocoon.attestation.simtdx import SimTdx
from cocoon.attestation.verify import Verifier
from cocoon.client.session import engine_chunks
from cocoon.core import codec
from cocoon.core.bus import BusProducer
from cocoon.core.bus.admin import apply_topics, list_topics
from cocoon.core.bus.security import aiokafka_security
from cocoon.core.catalog import dead_letter_spec, load_catalog
from cocoon.core.crypto import (
    HpkeSuite,
    ResponseOpener,
    SignedReceipt,
    WorkerKeys,
    WorkerPublicKeys,
    seal_request,
    verify_receipt,
)
from cocoon.gateway.pipeline import ChatChunk, parse_engine_chunk
from cocoon.network.engine_process import EngineProcess
from cocoon.worker_proxy.receipts_log import read_receipts
from cocoon.worker_proxy.service import Settings, WorkerProxy, build

CATALOG = load_catalog()
TOPICS = [
    "attestation.evidence",
    "attestation.verdicts",
    "attestation.credentials",
    "worker.heartbeats",
    "inference.responses",
    "usage.receipts",
    "inference.outcomes",
]
READ = ["attestation.evidence", "worker.heartbeats", *TOPICS[4:]]
# The real engine on the shared 2-core machine: at a load average of ~20, 24 tokens took 30 s.
WAIT_S = 120.0
STORY = "Write a very long story about a lighthouse keeper and the sea, in many chapters."


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Bus:
    """Every record of the topics the worker writes, raw and decoded, from the beginning."""

    prefix: str
    raw: list[tuple[str, bytes]] = field(default_factory=list)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def of(self, topic: str, **match: Any) -> list[dict[str, Any]]:
        return [
            r for r in self.records.get(topic, []) if all(r.get(k) == v for k, v in match.items())
        ]

    async def wait_for(self, topic: str, timeout_s: float = WAIT_S, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while not (found := self.of(topic, **match)):
            assert time.monotonic() < deadline, f"nothing on {topic} matching {match}"
            await asyncio.sleep(0.02)
        return found[-1]


async def read_all(bootstrap: str, bus: Bus, stop: asyncio.Event) -> None:
    # No group: a subscription then covers every partition, read from the beginning.
    consumer = AIOKafkaConsumer(
        *[bus.prefix + t for t in READ],
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
        **aiokafka_security(),
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            for records in batch.values():
                for record in records:
                    topic = record.topic.removeprefix(bus.prefix)
                    bus.raw.append((topic, record.value))
                    _, value = codec.decode(record.value)
                    bus.records.setdefault(topic, []).append(value)
    finally:
        await consumer.stop()


@dataclass
class Network:
    bootstrap: str
    prefix: str
    bus: Bus
    producer: BusProducer
    model: str


@pytest.fixture(scope="module")
async def network(kafka_bootstrap: str) -> AsyncIterator[Network]:
    prefix = f"wp-{uuid.uuid4().hex[:8]}."
    specs = [CATALOG[t] for t in TOPICS]
    apply_topics(kafka_bootstrap, specs + [dead_letter_spec(s) for s in specs], prefix=prefix)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COCOON_TOPIC_PREFIX", prefix)  # the service's bus clients read it
        bus, stop = Bus(prefix), asyncio.Event()
        reader = asyncio.create_task(read_all(kafka_bootstrap, bus, stop))
        async with BusProducer(kafka_bootstrap, prefix=prefix) as producer:
            yield Network(kafka_bootstrap, prefix, bus, producer, "smollm2-135m-instruct")
        stop.set()
        await reader


@contextlib.asynccontextmanager
async def running(network: Network, engine_url: str, **overrides: Any) -> AsyncIterator[Any]:
    settings = Settings(
        kafka_bootstrap=network.bootstrap,
        worker_id=f"w-{uuid.uuid4().hex[:10]}",
        model=network.model,
        engine_url=engine_url,
        heartbeat_seconds=0.5,
        **overrides,
    )
    service = build(settings)
    stopping = asyncio.Event()
    await service.start()
    task = asyncio.create_task(service.run(stopping))
    try:
        yield service, stopping, task
    finally:
        stopping.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await service.close()


@pytest.fixture(scope="module")
async def worker(
    network: Network, engine_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProxy]:
    receipts_file = tmp_path_factory.mktemp("worker") / "receipts.jsonl"
    async with running(network, engine_url, max_active_requests=2, receipts_file=receipts_file) as (
        service,
        _,
        _,
    ):
        yield service


def published_keys(network: Network, worker_id: str) -> WorkerPublicKeys:
    """The worker's public keys as a gateway learns them: from its attested claims."""
    evidence = network.bus.of("attestation.evidence", worker_id=worker_id)[-1]
    claims = Claims.decode(evidence["claims"])
    return WorkerPublicKeys(claims.signing_key, claims.hpke_x25519, claims.hpke_mlkem768_x25519)


async def send_work(
    network: Network,
    worker_id: str,
    body: dict[str, Any],
    *,
    max_tokens: int,
    keys: WorkerPublicKeys | None = None,
    seal_worker_id: str | None = None,
    deadline_s: float = 60.0,
    request_id: str | None = None,
    suite: HpkeSuite = HpkeSuite.MLKEM768_X25519,
) -> tuple[str, bytes]:
    """Seal `body` as the gateway does and put a RUN on the worker's topic."""
    await network.bus.wait_for("attestation.evidence", worker_id=worker_id)
    request_id = request_id or str(uuid.uuid4())
    sealed, response_key = seal_request(
        keys or published_keys(network, worker_id),
        request_id,
        seal_worker_id or worker_id,
        network.model,
        json.dumps(body).encode(),
        suite,
    )
    await network.producer.send(
        f"work.{worker_id}",
        {
            "request_id": request_id,
            "assignment_id": f"{request_id}:1",
            "attempt": 1,
            "model": network.model,
            "action": "RUN",
            **sealed.to_record(),
            "max_tokens": max_tokens,
            "coefficient": 1500,
            "gateway_id": "gw-test",
            "deadline_at": now_ms() + int(deadline_s * 1000),
            "sent_at": now_ms(),
        },
        record="cocoon.inference.WorkItem",
    )
    return request_id, response_key


async def send_cancel(network: Network, worker_id: str, request_id: str) -> None:
    await network.producer.send(
        f"work.{worker_id}",
        {
            "request_id": request_id,
            "assignment_id": f"{request_id}:1",
            "attempt": 1,
            "model": network.model,
            "action": "CANCEL",
            "max_tokens": 0,
            "coefficient": 0,
            "gateway_id": "gw-test",
            "deadline_at": now_ms(),
            "sent_at": now_ms(),
        },
        record="cocoon.inference.WorkItem",
    )


def open_stream(network: Network, request_id: str, response_key: bytes) -> list[bytes]:
    """Open every chunk of the request in order; the opener proves order and the final flag."""
    chunks = sorted(
        network.bus.of("inference.responses", request_id=request_id), key=lambda c: c["seq"]
    )
    opener = ResponseOpener(response_key, request_id)
    plain = [opener.open(c["seq"], c["final"], c["ciphertext"]) for c in chunks]
    opener.end()
    return plain


def text_of(plain: list[bytes]) -> str:
    """The answer's text: a record holds one engine chunk per line (coalesced)."""
    out = []
    for data in plain:
        for line in data.split(b"\n"):
            chunk = json.loads(line)
            for choice in chunk.get("choices") or []:
                out.append((choice.get("delta") or {}).get("content") or choice.get("text") or "")
    return "".join(out)


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "ignored", "messages": [{"role": "user", "content": content}], **extra}


def verified_receipt(network: Network, worker_id: str, request_id: str) -> SignedReceipt:
    record = network.bus.of("usage.receipts", request_id=request_id)[-1]
    signed = SignedReceipt.from_record(record)
    verify_receipt(signed, expected_signing_key=published_keys(network, worker_id).signing_key)
    return signed


# -- start-up ----------------------------------------------------------------------------------


async def test_start_publishes_verifiable_evidence_heartbeats_and_work_topic(
    network: Network, worker: WorkerProxy
) -> None:
    evidence = await network.bus.wait_for("attestation.evidence", worker_id=worker.worker_id)
    claims = Claims.decode(evidence["claims"])
    assert claims.signing_key == worker.identity.keys.public.signing_key
    assert claims.hpke_mlkem768_x25519 == worker.identity.keys.public.hpke_mlkem768_x25519
    assert claims.model == network.model
    sim = SimTdx.load_or_create()
    verdict = Verifier(sim.development_policy(), BundleSource([sim.collateral()])).verify(
        evidence["tdx_quote"], claims
    )
    assert verdict.accepted, verdict.reason

    beat = await network.bus.wait_for("worker.heartbeats", worker_id=worker.worker_id)
    assert beat["work_topic"] == f"work.{worker.worker_id}"
    assert beat["models"] == [network.model] and beat["max_active_requests"] == 2
    await asyncio.sleep(1.2)  # heartbeat_seconds=0.5: more keep coming, in order
    seqs = [b["seq"] for b in network.bus.of("worker.heartbeats", worker_id=worker.worker_id)]
    assert len(seqs) >= 3 and seqs == sorted(seqs)

    topics = list_topics(network.bootstrap, network.prefix + f"work.{worker.worker_id}")
    assert set(topics) == {
        network.prefix + f"work.{worker.worker_id}",
        network.prefix + f"work.{worker.worker_id}.dlq",
    }


async def send_verdict(
    network: Network,
    worker: WorkerProxy,
    evidence: dict[str, Any],
    *,
    valid_ms: int,
    signing_key: bytes | None = None,
    challenge: bytes | None = None,
) -> int:
    """Write the verdict the attestation service would write; returns its issue time."""
    issued = now_ms()
    await network.producer.send(
        "attestation.verdicts",
        {
            "verdict_id": str(uuid.uuid4()),
            "worker_id": worker.worker_id,
            "evidence_id": evidence["evidence_id"],
            "status": "TRUSTED",
            "models": [network.model],
            "signing_key": signing_key or worker.identity.keys.public.signing_key,
            "registry_version": 1,
            "issued_at": issued,
            "expires_at": issued + valid_ms,
            "challenge": challenge,
            "attestor_key_id": "att-test",
            "signature": bytes(64),
        },
        record="cocoon.attestation.Verdict",
    )
    return issued


async def test_heartbeats_starting_until_its_own_key_is_trusted(
    network: Network, engine_url: str
) -> None:
    async with running(network, engine_url) as (service, _, _):
        wid = service.worker_id
        evidence = await network.bus.wait_for("attestation.evidence", worker_id=wid)
        await network.bus.wait_for("worker.heartbeats", worker_id=wid)
        # A trusted verdict for another key (an earlier process with this worker id) does not
        # make this process placeable: the gateway would seal prompts to a key that is gone.
        other_key = WorkerKeys.generate().public.signing_key
        await send_verdict(network, service, evidence, valid_ms=60_000, signing_key=other_key)
        await asyncio.sleep(1.2)  # heartbeat_seconds=0.5
        beats = network.bus.of("worker.heartbeats", worker_id=wid)
        assert len(beats) >= 3 and {b["state"] for b in beats} == {"STARTING"}

        issued = await send_verdict(network, service, evidence, valid_ms=60_000)
        ready = await network.bus.wait_for("worker.heartbeats", worker_id=wid, state="READY")
        assert ready["sent_at"].timestamp() * 1000 - issued < 400  # at once, not at the next beat


# -- one request -------------------------------------------------------------------------------


async def test_run_streams_sealed_chunks_then_signed_receipt_and_outcome(
    network: Network, worker: WorkerProxy
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    # The body asks for far more than the WorkItem allows: the WorkItem's cap wins.
    request_id, key = await send_work(
        network,
        worker.worker_id,
        chat(f"Say hello to {canary} in one sentence.", max_tokens=4000),
        max_tokens=12,
    )
    outcome = await network.bus.wait_for("inference.outcomes", request_id=request_id)
    assert outcome["status"] == "SUCCEEDED", outcome
    assert outcome["reported_by"] == "worker-proxy" and outcome["time_to_first_chunk_ms"] >= 0

    plain = open_stream(network, request_id, key)
    text = text_of(plain)
    assert text.strip()
    final = json.loads(plain[-1])
    assert final["choices"] == [] and final["usage"]["completion_tokens"] > 0
    chunks = network.bus.of("inference.responses", request_id=request_id)
    assert all(c["gateway_id"] == "gw-test" and c["attempt"] == 1 for c in chunks)
    assert [c["final"] for c in chunks] == [False] * (len(chunks) - 1) + [True]

    receipt = verified_receipt(network, worker.worker_id, request_id).receipt
    assert receipt.completed and receipt.worker_id == worker.worker_id
    assert 0 < receipt.completion_tokens <= 12
    assert receipt.completion_tokens == final["usage"]["completion_tokens"]
    assert receipt.prompt_tokens == final["usage"]["prompt_tokens"] > 0
    assert receipt.coefficient == 1500 and receipt.receipt_id == f"{request_id}:1"
    # The owner's copy: the same signed receipt, written before it was sent.
    assert worker.settings.receipts_file is not None
    kept = {r["receipt_id"]: r for r in read_receipts(worker.settings.receipts_file)}
    sent = verified_receipt(network, worker.worker_id, request_id)
    assert kept[receipt.receipt_id]["signature"] == sent.signature.hex()
    assert kept[receipt.receipt_id]["completion_tokens"] == receipt.completion_tokens
    assert outcome["completion_tokens"] == receipt.completion_tokens

    # Ciphertext and metadata only: neither the prompt nor the answer is on the bus.
    everything = b"".join(value for _, value in network.bus.raw)
    assert canary.encode() not in everything
    assert text.strip().encode() not in everything


async def test_completions_endpoint_and_classical_suite(
    network: Network, worker: WorkerProxy
) -> None:
    request_id, key = await send_work(
        network,
        worker.worker_id,
        {"model": "x", "prompt": "The capital of France is"},
        max_tokens=6,
        suite=HpkeSuite.X25519,
    )
    outcome = await network.bus.wait_for("inference.outcomes", request_id=request_id)
    assert outcome["status"] == "SUCCEEDED", outcome
    plain = open_stream(network, request_id, key)
    assert text_of(plain).strip()
    assert json.loads(plain[-1])["object"] == "text_completion"
    assert verified_receipt(network, worker.worker_id, request_id).receipt.completion_tokens <= 6


async def test_concurrent_requests_all_finish(network: Network, worker: WorkerProxy) -> None:
    sent = [
        await send_work(network, worker.worker_id, chat(f"Count to {n}."), max_tokens=5)
        for n in (3, 4, 5)
    ]
    for request_id, key in sent:
        outcome = await network.bus.wait_for("inference.outcomes", request_id=request_id)
        assert outcome["status"] == "SUCCEEDED", outcome
        assert text_of(open_stream(network, request_id, key)).strip()


# -- coalesced records -------------------------------------------------------------------------
# After the first chunk (sent at once), the engine chunks produced within the linger share one
# sealed record, one JSON document per line. The gateway's and the client's readers must turn
# the records back into exactly the text the engine streams when called directly, in order, and
# the receipt must count every token the records carry.

# Longer than an answer here takes on a usable machine: after the first token, everything waits
# for the end of the stream, so the records are [first token], [the rest], [usage].
LINGER_MS = 60_000
MAX_TOKENS = 16
PROMPT = "List ten animals, one per line."


@pytest.fixture(scope="module")
async def lingering_worker(network: Network, engine_url: str) -> AsyncIterator[WorkerProxy]:
    async with running(network, engine_url, chunk_linger_ms=LINGER_MS) as (service, _, _):
        yield service


async def direct_text(engine_url: str, engine_model: str) -> str:
    """The engine's own streamed answer to the same request (temperature 0: deterministic)."""
    body = {**chat(PROMPT), "model": engine_model, "max_tokens": MAX_TOKENS, "temperature": 0}
    pieces = []
    async with (
        httpx.AsyncClient(timeout=120) as http,
        http.stream(
            "POST", f"{engine_url}/chat/completions", json={**body, "stream": True}
        ) as response,
    ):
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices") or []:
                pieces.append((choice.get("delta") or {}).get("content") or "")
    return "".join(pieces)


def gateway_text(records: list[bytes]) -> str:
    items = [item for record in records for item in parse_engine_chunk(record, "chat.completions")]
    return "".join(item.text for item in items if isinstance(item, ChatChunk))


def client_text(records: list[bytes]) -> str:
    out = []
    for record in records:
        for chunk in engine_chunks(record):
            for choice in chunk.get("choices") or []:
                out.append((choice.get("delta") or {}).get("content") or "")
    return "".join(out)


def content_lines(record: bytes) -> list[dict[str, Any]]:
    """The engine chunks in `record` that carry text (a token each)."""
    return [
        chunk
        for chunk in (json.loads(line) for line in record.split(b"\n"))
        if any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or [])
    ]


async def test_records_coalesce_tokens_in_order_and_readers_rebuild_the_engines_text(
    network: Network, lingering_worker: WorkerProxy, engine_url: str, engine_model: str
) -> None:
    request_id, key = await send_work(
        network,
        lingering_worker.worker_id,
        chat(PROMPT, temperature=0),
        max_tokens=MAX_TOKENS,
        deadline_s=WAIT_S,
    )
    outcome = await network.bus.wait_for("inference.outcomes", request_id=request_id)
    assert outcome["status"] == "SUCCEEDED", outcome
    records = open_stream(network, request_id, key)  # the opener proves seq order and final
    first, *rest, final = records
    # The first token is never held for company: its record carries it alone, and leaves
    # while the engine is still generating. The others wait up to the linger: one record when
    # the answer takes less than it, one more per linger a starved engine takes beyond that.
    assert len(content_lines(first)) == 1
    assert sum(len(content_lines(record)) for record in rest) == MAX_TOKENS - 1
    receipt = verified_receipt(network, lingering_worker.worker_id, request_id).receipt
    assert len(rest) <= 1 + (receipt.finished_at - receipt.started_at) // LINGER_MS
    assert any(len(content_lines(record)) > 1 for record in rest)
    sent = sorted(
        network.bus.of("inference.responses", request_id=request_id), key=lambda c: c["seq"]
    )
    assert sent[0]["produced_at"] < sent[1]["produced_at"]
    assert outcome["time_to_first_chunk_ms"] < LINGER_MS

    # The gateway's and the client's readers give back exactly the engine's own text.
    expected = await direct_text(engine_url, engine_model)
    assert expected.strip()
    assert gateway_text(records) == expected
    assert client_text(records) == expected

    # Billing stays exact: the signed receipt counts every token the records carried.
    assert receipt.completion_tokens == json.loads(final)["usage"]["completion_tokens"]
    assert receipt.completion_tokens == MAX_TOKENS


# -- capacity: what the engine runs at once ----------------------------------------------------


@contextlib.asynccontextmanager
async def engine_reporting_slots(total_slots: int) -> AsyncIterator[str]:
    """llama.cpp's `llama-server` as far as the worker asks it at start: `GET /props` with its
    `total_slots` (a GPU engine's parallel slots cannot run here). Anything else is a 404."""
    asked: list[str] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line = head.split("\r\n", 1)[0]
        asked.append(request_line)
        if request_line == "GET /props HTTP/1.1":
            body, status = json.dumps({"total_slots": total_slots}).encode(), "200 OK"
        else:
            body, status = b'{"error": "not found"}', "404 Not Found"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await server.wait_closed()
    assert "GET /props HTTP/1.1" in asked


async def test_capacity_unset_is_asked_from_the_engine_and_advertised(network: Network) -> None:
    async with (
        engine_reporting_slots(3) as url,
        running(network, url) as (service, _, _),
    ):
        beat = await network.bus.wait_for("worker.heartbeats", worker_id=service.worker_id)
        assert beat["max_active_requests"] == 3 == service.capacity


async def test_an_engine_that_does_not_say_runs_one_request_at_a_time(
    network: Network, engine_url: str
) -> None:
    # llama-cpp-python's server (the real engine here) has no /props and serves one stream at
    # a time: the worker advertises 1 and runs its requests one after the other.
    async with running(network, engine_url) as (service, _, _):
        beat = await network.bus.wait_for("worker.heartbeats", worker_id=service.worker_id)
        assert beat["max_active_requests"] == 1
        sent = [
            await send_work(
                network, service.worker_id, chat(f"Count to {n}."), max_tokens=6, deadline_s=WAIT_S
            )
            for n in (3, 4)
        ]
        receipts = []
        for request_id, _ in sent:
            outcome = await network.bus.wait_for("inference.outcomes", request_id=request_id)
            assert outcome["status"] == "SUCCEEDED", outcome
            receipts.append(verified_receipt(network, service.worker_id, request_id).receipt)
        first, second = sorted(receipts, key=lambda r: r.started_at)
        assert second.started_at >= first.finished_at


# -- cancellation, deadline, refusals ----------------------------------------------------------


async def test_cancel_mid_stream_ends_stream_and_receipts_tokens_so_far(
    network: Network, worker: WorkerProxy
) -> None:
    request_id, key = await send_work(network, worker.worker_id, chat(STORY), max_tokens=400)
    deadline = time.monotonic() + 30
    while len(network.bus.of("inference.responses", request_id=request_id)) < 4:
        assert time.monotonic() < deadline, "no chunks"
        await asyncio.sleep(0.01)
    cancelled_at = time.monotonic()
    await send_cancel(network, worker.worker_id, request_id)

    outcome = await network.bus.wait_for("inference.outcomes", request_id=request_id)
    assert outcome["status"] == "CANCELLED" and outcome["error_code"] == "cancelled"
    assert time.monotonic() - cancelled_at < 3  # not the 400 tokens (~5 s at 85 tokens/s)
    receipt = verified_receipt(network, worker.worker_id, request_id).receipt
    assert receipt.completed is False
    plain = open_stream(network, request_id, key)  # ends with a final chunk: not truncated
    produced = sum(len(content_lines(p)) for p in plain[:-1])  # a token per engine chunk
    assert 3 <= receipt.completion_tokens < 400
    assert receipt.completion_tokens == produced
    # The prompt was evaluated: it is paid for even though the engine's closing usage never came.
    assert receipt.prompt_tokens > 10
    final = network.bus.of("inference.responses", request_id=request_id, final=True)
    assert final[0]["error_code"] == "cancelled"
    assert json.loads(plain[-1])["error"]["code"] == "cancelled"


async def test_deadline_gives_timed_out_with_partial_receipt(
    network: Network, worker: WorkerProxy
) -> None:
    request_id, key = await send_work(
        network, worker.worker_id, chat(STORY), max_tokens=400, deadline_s=1.5
    )
    outcome = await network.bus.wait_for("inference.outcomes", request_id=request_id)
    assert outcome["status"] == "TIMED_OUT" and outcome["error_code"] == "timed_out"
    receipt = verified_receipt(network, worker.worker_id, request_id).receipt
    assert receipt.completed is False and receipt.completion_tokens < 400
    assert json.loads(open_stream(network, request_id, key)[-1])["error"]["code"] == "timed_out"


async def test_payload_sealed_for_another_worker_fails_unsealable(
    network: Network, worker: WorkerProxy
) -> None:
    other_keys = WorkerKeys.generate().public
    # Sealed to another worker's key...
    first, _ = await send_work(
        network, worker.worker_id, chat("secret"), max_tokens=5, keys=other_keys
    )
    # ...and sealed to this worker's key but bound to another worker id (a replay).
    second, _ = await send_work(
        network, worker.worker_id, chat("secret"), max_tokens=5, seal_worker_id="w-someone-else"
    )
    for request_id in (first, second):
        outcome = await network.bus.wait_for("inference.outcomes", request_id=request_id)
        assert outcome["status"] == "FAILED" and outcome["error_code"] == "unsealable"
        assert outcome["completion_tokens"] == 0 and outcome["time_to_first_chunk_ms"] is None
        assert not network.bus.of("inference.responses", request_id=request_id)
        assert not network.bus.of("usage.receipts", request_id=request_id)


async def test_body_that_is_not_an_openai_request_fails_sealed(
    network: Network, worker: WorkerProxy
) -> None:
    request_id, key = await send_work(network, worker.worker_id, {"hello": "world"}, max_tokens=5)
    outcome = await network.bus.wait_for("inference.outcomes", request_id=request_id)
    assert outcome["status"] == "FAILED" and outcome["error_code"] == "bad_request"
    plain = open_stream(network, request_id, key)
    assert json.loads(plain[-1])["error"]["code"] == "bad_request"
    assert not network.bus.of("usage.receipts", request_id=request_id)


# -- attestation refresh, shutdown, engine failure ---------------------------------------------


async def test_evidence_resubmitted_with_challenge_before_verdict_expiry(
    network: Network, worker: WorkerProxy
) -> None:
    first = await network.bus.wait_for("attestation.evidence", worker_id=worker.worker_id)
    challenge = os.urandom(32)
    # Trusted for 3 s, with a challenge for the next claims.
    issued = await send_verdict(network, worker, first, valid_ms=3000, challenge=challenge)
    second = await network.bus.wait_for(
        "attestation.evidence", timeout_s=10, worker_id=worker.worker_id, nonce=challenge
    )
    took = now_ms() - issued
    assert 1000 <= took < 3000  # halfway to expiry, before it
    claims = Claims.decode(second["claims"])
    assert claims.freshness.nonce == challenge
    assert claims.signing_key == worker.identity.keys.public.signing_key


async def test_stopping_drains_in_flight_work_and_heartbeats_draining(
    network: Network, engine_url: str
) -> None:
    async with running(network, engine_url) as (service, stopping, task):
        request_id, key = await send_work(network, service.worker_id, chat(STORY), max_tokens=40)
        await network.bus.wait_for("inference.responses", request_id=request_id)
        stopping.set()  # what the runtime does on SIGTERM
        await asyncio.wait_for(task, 30)
        # run() returned only after the in-flight request finished and its outcome was acked.
        outcome = await network.bus.wait_for("inference.outcomes", request_id=request_id)
        assert outcome["status"] == "SUCCEEDED"  # finished, not cut off
        assert text_of(open_stream(network, request_id, key)).strip()
        beat = await network.bus.wait_for(
            "worker.heartbeats", worker_id=service.worker_id, state="DRAINING"
        )
        assert (
            beat["seq"] > network.bus.of("worker.heartbeats", worker_id=service.worker_id)[0]["seq"]
        )
        # Work sent after the stop is left on the topic for the next process, not started.
        late, _ = await send_work(network, service.worker_id, chat("hi"), max_tokens=3)
        await asyncio.sleep(1.0)
        assert not network.bus.of("inference.outcomes", request_id=late)
        assert not service.jobs


async def test_engine_down_fails_with_sealed_error_and_empty_receipt(network: Network) -> None:
    async with running(network, "http://127.0.0.1:9/v1") as (service, _, _):
        request_id, key = await send_work(network, service.worker_id, chat("hi"), max_tokens=5)
        outcome = await network.bus.wait_for("inference.outcomes", request_id=request_id)
        assert outcome["status"] == "FAILED" and outcome["error_code"] == "engine_error"
        assert json.loads(open_stream(network, request_id, key)[-1])["error"]["code"] == (
            "engine_error"
        )
        receipt = verified_receipt(network, service.worker_id, request_id).receipt
        assert receipt.completed is False and receipt.completion_tokens == 0


def test_settings_refuse_a_worker_id_that_cannot_name_a_topic() -> None:
    with pytest.raises(ValueError, match="worker_id"):
        Settings(worker_id="Bad_Id", model="m")


def test_settings_keep_the_payout_address_in_raw_form_and_refuse_a_bad_one() -> None:
    from cocoon.core.ton_address import TonAddress

    friendly = TonAddress(0, b"\x42" * 32).friendly(bounceable=True)
    assert Settings(worker_id="w", model="m", payout_address=friendly).payout_address == (
        "0:" + "42" * 32
    )
    with pytest.raises(ValueError, match="checksum"):
        Settings(worker_id="w", model="m", payout_address=friendly[:-2] + "AA")


async def test_the_payout_address_is_attested_in_every_evidence(
    network: Network, engine_url: str
) -> None:
    address = "-1:" + "0d" * 32
    async with running(network, engine_url, payout_address=address) as (service, _, _):
        evidence = await network.bus.wait_for("attestation.evidence", worker_id=service.worker_id)
        claims = Claims.decode(evidence["claims"])
        assert claims.payout_address == address
        sim = SimTdx.load_or_create()
        verdict = Verifier(sim.development_policy(), BundleSource([sim.collateral()])).verify(
            evidence["tdx_quote"], claims
        )
        assert verdict.accepted, verdict.reason


# -- embeddings --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def embedding_worker(
    network: Network, embedding_engine: EngineProcess
) -> AsyncIterator[WorkerProxy]:
    async with running(
        network, embedding_engine.base_url, capabilities=["EMBEDDINGS"], context_length=256
    ) as (service, _, _):
        yield service


def opened_error(plain: list[bytes]) -> dict[str, Any]:
    return json.loads(plain[-1])["error"]


async def test_embeddings_come_back_sealed_in_bounded_chunks_with_a_signed_input_receipt(
    network: Network, embedding_worker: WorkerProxy, embedding_engine: EngineProcess
) -> None:
    wid = embedding_worker.worker_id
    beat = await network.bus.wait_for("worker.heartbeats", worker_id=wid)
    assert beat["capabilities"] == ["EMBEDDINGS"] and beat["context_length"] == 256
    # Enough floats (about 8 kB of JSON per embedding) that the answer cannot go back as one
    # Kafka record; short inputs, so the CPU model is quick.
    canary = f"canary{uuid.uuid4().hex[:8]}"
    inputs = [f"sentence {n}" for n in range(150)] + [f"the {canary} one"]
    body = {"model": "x", "input": inputs, "encoding_format": "float"}
    # An explicit null means the default: the worker drops it (the engine knows no `stream`).
    request_id, key = await send_work(network, wid, {**body, "stream": None}, max_tokens=1)
    outcome = await network.bus.wait_for("inference.outcomes", request_id=request_id)
    assert outcome["status"] == "SUCCEEDED", outcome

    plain = open_stream(network, request_id, key)
    assert len(plain) > 2 and all(len(p) < 300 * 1024 for p in plain)
    data = [item for p in plain[:-1] for item in json.loads(p)["data"]]
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(f"{embedding_engine.base_url}/embeddings", json=body)
    direct = answer.json()
    assert [d["index"] for d in data] == list(range(151))
    assert [d["embedding"] for d in data] == [d["embedding"] for d in direct["data"]]
    final = json.loads(plain[-1])
    assert final["data"] == [] and final["usage"] == direct["usage"]

    receipt = verified_receipt(network, wid, request_id).receipt
    assert receipt.completed and receipt.completion_tokens == 0
    assert receipt.prompt_tokens == direct["usage"]["prompt_tokens"] > 151
    everything = b"".join(value for _, value in network.bus.raw)
    assert canary.encode() not in everything


async def test_an_endpoint_the_model_does_not_serve_is_refused_sealed_as_a_bad_request(
    network: Network, worker: WorkerProxy, embedding_worker: WorkerProxy
) -> None:
    cases = [
        (embedding_worker.worker_id, chat("Hello"), "chat.completions"),
        (worker.worker_id, {"model": "x", "input": "Hello"}, "embeddings"),
    ]
    for wid, body, endpoint in cases:
        request_id, key = await send_work(network, wid, body, max_tokens=5)
        outcome = await network.bus.wait_for("inference.outcomes", request_id=request_id)
        assert (outcome["status"], outcome["error_code"]) == ("FAILED", "bad_request")
        error = opened_error(open_stream(network, request_id, key))
        assert error["type"] == "invalid_request_error" and endpoint in error["message"]


async def test_the_engine_refusing_an_embedding_request_is_sealed_with_its_reason(
    network: Network, embedding_worker: WorkerProxy
) -> None:
    body = {"model": "x", "input": "Hello", "dimensions": 64}
    request_id, key = await send_work(network, embedding_worker.worker_id, body, max_tokens=1)
    outcome = await network.bus.wait_for("inference.outcomes", request_id=request_id)
    assert (outcome["status"], outcome["error_code"]) == ("FAILED", "engine_rejected")
    error = opened_error(open_stream(network, request_id, key))
    assert error["param"] == "dimensions" and "384" in error["message"]
