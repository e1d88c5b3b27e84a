"""The production `InferenceBackend`: one request through Kafka, as docs/architecture.md lays out.

The gateway publishes only metadata until a worker is assigned; then it seals the body to that
worker's attested key, sends it to the worker's own topic, and opens the sealed chunks coming back.
It never puts the prompt or the answer on the bus in clear text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from cocoon.core.bus import BusProducer
from cocoon.core.bus.broadcast import BroadcastRecord
from cocoon.core.capabilities import serves
from cocoon.core.codec.timestamps import now_millis
from cocoon.core.contracts import ErrorCode, Topic
from cocoon.core.crypto import OpenError, ResponseOpener, StreamError, seal_request
from cocoon.core.crypto.keys import HpkeSuite, SingleHpkeKey
from cocoon.gateway.admission import Admission, AdmissionGrants
from cocoon.gateway.api.backend import (
    ChatChunk,
    Embeddings,
    InferenceRequest,
    ModelInfo,
    ToolCallDelta,
    Usage,
)
from cocoon.gateway.api.errors import (
    ApiError,
    EndpointNotServed,
    InsufficientFunds,
    InternalError,
    InvalidRequest,
    NoWorkerAvailable,
    UnknownModel,
    UpstreamTimeout,
    WorkerLost,
)
from cocoon.gateway.models import ROUTES, NetworkPrices, model_listing
from cocoon.gateway.workers import TrustedWorker, WorkerDirectory

log = logging.getLogger(__name__)

GRANTS_TOPIC = Topic.BILLING_GRANTS
REPLY_TOPICS = (
    GRANTS_TOPIC,
    Topic.BILLING_RESERVATIONS,
    Topic.INFERENCE_ASSIGNMENTS,
    Topic.INFERENCE_RESPONSES,
    Topic.INFERENCE_OUTCOMES,
)


@dataclass
class _InFlight:
    """What the gateway holds for one request: the plaintext stays here, never on the bus."""

    request: InferenceRequest
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    attempt: int = 0
    worker_id: str | None = None
    work_topic: str | None = None
    opener: ResponseOpener | None = None
    # The request's deadline, fixed when it is published: a re-placement keeps it.
    deadline_ms: int = 0


class KafkaBackend:
    def __init__(
        self,
        producer: BusProducer,
        workers: WorkerDirectory,
        *,
        gateway_id: str,
        channel: str = "HTTP",
        grants: AdmissionGrants | None = None,
        prices: Callable[[], NetworkPrices | None] = lambda: None,
    ) -> None:
        self.producer = producer
        self.prices = prices  # the registry's price list, for /v1/models
        self.workers = workers
        self.gateway_id = gateway_id
        self.channel = channel
        # None: every request waits for billing's reservation (no admission grants).
        self.grants = grants
        self._inflight: dict[str, _InFlight] = {}

    # -- replies -------------------------------------------------------------------------------
    def on_reply(self, record: BroadcastRecord) -> None:
        """Route a record from a reply topic to the request waiting for it (if it is ours)."""
        value = record.value
        if value is None:
            return
        if record.topic == GRANTS_TOPIC:
            if self.grants is not None:
                self.grants.on_record(value)
            return
        state = self._inflight.get(value.get("request_id", ""))
        if state is None:
            return
        if record.topic == Topic.INFERENCE_OUTCOMES and not self.workers.vouched(record):
            return  # another worker (or anyone) must not end this request in a worker's name
        # Outcomes carry no gateway id: the request id alone says whose they are.
        if "gateway_id" in value and value["gateway_id"] != self.gateway_id:
            return
        state.events.put_nowait((record.topic, value))

    # -- InferenceBackend ----------------------------------------------------------------------
    async def models(self) -> list[ModelInfo]:
        return model_listing(self.workers, self.prices())

    def check_model(self, request: InferenceRequest) -> None:
        """404 for a model no worker ever served; 400 for an endpoint its workers do not serve
        (on both paths: the client-sealed envelope names its endpoint in clear)."""
        if not self.workers.knows_model(request.model):
            raise UnknownModel(request.model)
        capabilities = self.workers.model_capabilities(request.model)
        if capabilities and not serves(capabilities, request.endpoint):
            serving = self.workers.models_serving(request.endpoint)
            raise EndpointNotServed(request.model, ROUTES[request.endpoint], serving)

    async def submit(
        self, account_id: str, request: InferenceRequest
    ) -> AsyncIterator[ChatChunk | Embeddings | Usage]:
        self.check_model(request)
        state = _InFlight(request)
        self._inflight[request.request_id] = state
        finished = False
        try:
            state.deadline_ms = await self._publish_request(account_id, request)
            deadline = time.monotonic() + request.timeout
            while True:
                topic, value = await self._next_event(state, deadline)
                if topic == Topic.BILLING_RESERVATIONS:
                    self._on_reservation(value)
                elif topic == Topic.INFERENCE_ASSIGNMENTS:
                    await self._on_assignment(state, value)
                elif topic == Topic.INFERENCE_OUTCOMES:
                    self._on_outcome(state, value)
                elif topic == Topic.INFERENCE_RESPONSES:
                    items, final = self._open_chunk(state, value)
                    for item in items:
                        yield item
                    if final:
                        finished = True
                        return
        finally:
            self._inflight.pop(request.request_id, None)
            if not finished and state.work_topic is not None:
                # The client went away or the request failed: stop the generation.
                with contextlib.suppress(Exception):
                    await self._send_cancel(state)

    # -- steps ---------------------------------------------------------------------------------
    async def _publish_request(
        self, account_id: str, request: InferenceRequest, candidates: tuple[str, ...] = ()
    ) -> int:
        """Publish the request's metadata; return its deadline (unix ms)."""
        admission = Admission(None, 0, None)
        if self.grants is not None:
            admission = self.grants.admit(
                account_id,
                max_tokens=request.max_tokens,
                prompt_size=request.prompt_bytes,
                max_coefficient=request.max_coefficient,
            )
        created = now_millis()
        deadline_ms = created + int(request.timeout * 1000)
        await self.producer.send(
            Topic.INFERENCE_REQUESTS,
            {
                "request_id": request.request_id,
                "account_id": account_id,
                "model": request.model,
                "max_tokens": request.max_tokens,
                "prompt_bytes": request.prompt_bytes,
                "max_coefficient": request.max_coefficient,
                "stream": request.stream,
                "channel": self.channel,
                "gateway_id": self.gateway_id,
                "created_at": created,
                "deadline_at": deadline_ms,
                "grant_id": admission.grant_id,
                "grant_ask_requests": admission.ask_requests,
                "grant_return_id": admission.return_grant_id,
                "candidates": list(candidates),
            },
        )
        return deadline_ms

    @staticmethod
    async def _next_event(state: _InFlight, deadline: float) -> tuple[str, dict]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout()
        try:
            return await asyncio.wait_for(state.events.get(), remaining)
        except TimeoutError:
            raise UpstreamTimeout() from None

    @staticmethod
    def _on_reservation(value: dict) -> None:
        if value["status"] == "HELD":
            return
        reason = value.get("reject_reason")
        if reason in ("INSUFFICIENT_FUNDS", "UNKNOWN_ACCOUNT"):
            # An account billing has never funded has a balance of zero: same answer, same 402.
            available = value.get("available_nanoton") or 0
            required = value["amount_nanoton"]
            raise InsufficientFunds(max(1, required - available), required_nanoton=required)
        if reason == "UNKNOWN_MODEL":
            raise UnknownModel(value["model"])
        raise ApiError(f"The request was not admitted ({reason}).")

    async def _on_assignment(self, state: _InFlight, value: dict) -> None:
        if value["attempt"] <= state.attempt:
            return  # a replayed or superseded assignment
        worker = self.workers.trusted(value["worker_id"])
        if worker is None:
            # Never seal to a key we have not verified; the lease will place it elsewhere.
            log.warning("assignment to a worker without a trusted verdict: %s", value["worker_id"])
            return
        if state.work_topic is not None and state.worker_id != worker.worker_id:
            with contextlib.suppress(Exception):
                await self._send_cancel(state)
        state.attempt = value["attempt"]
        state.worker_id = worker.worker_id
        state.work_topic = value["work_topic"]
        await self._send_work(state, worker, value)

    async def _send_work(self, state: _InFlight, worker: TrustedWorker, assignment: dict) -> None:
        request = state.request
        suite = HpkeSuite(worker.hpke_suite)
        public_key = SingleHpkeKey(suite, worker.hpke_public_key)
        body = json.dumps(request.body, separators=(",", ":")).encode()
        sealed, response_key = seal_request(
            public_key, request.request_id, worker.worker_id, request.model, body, suite
        )
        state.opener = ResponseOpener(response_key, request.request_id)
        await self.producer.send(
            assignment["work_topic"],
            {
                "request_id": request.request_id,
                "assignment_id": assignment["assignment_id"],
                "attempt": state.attempt,
                "model": request.model,
                "action": "RUN",
                **sealed.to_record(),
                "max_tokens": request.max_tokens,
                "coefficient": assignment["coefficient"],
                "gateway_id": self.gateway_id,
                "deadline_at": state.deadline_ms,
                "sent_at": now_millis(),
            },
            record="cocoon.inference.WorkItem",
        )

    async def _send_cancel(self, state: _InFlight) -> None:
        request = state.request
        if state.work_topic is None:
            return  # never sent to a worker: nothing to cancel
        await self.producer.send(
            state.work_topic,
            {
                "request_id": request.request_id,
                "assignment_id": f"{request.request_id}:{state.attempt}",
                "attempt": state.attempt,
                "model": request.model,
                "action": "CANCEL",
                "sealed_request": None,
                "hpke_enc": None,
                "hpke_suite": None,
                "sealed_body": None,
                "max_tokens": request.max_tokens,
                "coefficient": 0,
                "gateway_id": self.gateway_id,
                "deadline_at": now_millis(),
                "sent_at": now_millis(),
            },
            record="cocoon.inference.WorkItem",
        )

    @staticmethod
    def _on_outcome(state: _InFlight, value: dict) -> None:
        if value["attempt"] < state.attempt:
            return
        status, code = value["status"], value.get("error_code")
        if status == "SUCCEEDED":
            return  # the final chunk ends the stream; an outcome alone does not
        if code == ErrorCode.ENGINE_REJECTED:
            # The engine refused the request itself: the worker sealed its reason into the final
            # chunk before reporting this outcome, but the two topics are read in no set order.
            # That chunk makes the 400; a lost worker here would be a 502 the SDKs retry.
            return
        model = state.request.model
        if code == ErrorCode.UNKNOWN_MODEL:
            raise UnknownModel(model)
        if code == ErrorCode.PRICE_CAP:
            raise NoWorkerAvailable(model, min_coefficient=value.get("min_coefficient"))
        if code in (ErrorCode.NO_WORKER, ErrorCode.LEASE_EXPIRED):
            raise NoWorkerAvailable(model)
        if status == "TIMED_OUT":
            raise UpstreamTimeout()
        if status in ("WORKER_LOST", "FAILED", "LEASE_EXPIRED"):
            raise WorkerLost(f"The worker failed while serving this request ({code or status}).")
        raise InternalError(f"request ended with {status}")

    def _open_chunk(
        self, state: _InFlight, value: dict
    ) -> tuple[list[ChatChunk | Embeddings | Usage], bool]:
        if value["attempt"] != state.attempt or value["worker_id"] != state.worker_id:
            return [], False  # a chunk from a superseded attempt
        if state.opener is None:
            return [], False
        try:
            plain = state.opener.open(value["seq"], value["final"], value["ciphertext"])
        except (OpenError, StreamError) as exc:
            # Tampered, reordered or truncated: the stream cannot be trusted any more.
            raise WorkerLost(f"The response stream failed verification: {exc}") from None
        if value.get("error_code"):
            raise worker_error(plain, value["error_code"])
        items = parse_engine_chunk(plain, state.request.endpoint)
        return items, bool(value["final"])


def worker_error(plain: bytes, code: str) -> ApiError:
    """The client's error for a worker's sealed error chunk.

    A request the engine refused as invalid (the chunk's error `type` is OpenAI's
    `invalid_request_error`) is the client's to fix: a 400 with the engine's reason. Anything
    else is the worker's failure.
    """
    try:
        chunk = json.loads(plain)
    except ValueError:
        chunk = None
    error = chunk.get("error") if isinstance(chunk, dict) else None
    if isinstance(error, dict) and error.get("type") == InvalidRequest.type:
        param = error.get("param")
        return InvalidRequest(
            str(error.get("message") or "The engine refused the request."),
            param=param if isinstance(param, str) else None,
        )
    return WorkerLost(f"The worker reported an error ({code}).")


def tool_call_deltas(raw: object) -> tuple[ToolCallDelta, ...]:
    """The tool-call pieces of an engine's delta (OpenAI's shape; anything else is ignored)."""
    if not isinstance(raw, list):
        return ()
    out = []
    for position, call in enumerate(raw):
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        index = call.get("index")
        out.append(
            ToolCallDelta(
                index=index if isinstance(index, int) else position,
                id=call.get("id") if isinstance(call.get("id"), str) else None,
                name=function.get("name") if isinstance(function.get("name"), str) else None,
                arguments=function.get("arguments") or "",
            )
        )
    return tuple(out)


def parse_engine_chunk(plain: bytes, endpoint: str) -> list[ChatChunk | Embeddings | Usage]:
    """Turn one opened record (the engine's OpenAI streaming chunks, one JSON document per
    line: the worker coalesces what the engine produced within a few ms; or a run of
    embeddings) into API items."""
    items: list[ChatChunk | Embeddings | Usage] = []
    for line in plain.split(b"\n"):
        if line:
            items.extend(_engine_chunk_items(line, endpoint))
    return items


def _engine_chunk_items(line: bytes, endpoint: str) -> list[ChatChunk | Embeddings | Usage]:
    try:
        chunk = json.loads(line)
    except json.JSONDecodeError:
        raise InternalError("the worker sent a chunk that is not JSON") from None
    if not isinstance(chunk, dict):
        return []
    if "error" in chunk:
        raise WorkerLost(f"The engine failed: {chunk['error']}")
    items: list[ChatChunk | Embeddings | Usage] = []
    if endpoint == "embeddings":
        data = chunk.get("data")
        if isinstance(data, list) and data:
            items.append(Embeddings(tuple(d for d in data if isinstance(d, dict))))
    for choice in chunk.get("choices") or []:
        calls: tuple[ToolCallDelta, ...] = ()
        if endpoint == "chat.completions":
            delta = choice.get("delta") or {}
            text, role = delta.get("content") or "", delta.get("role")
            calls = tool_call_deltas(delta.get("tool_calls"))
        else:
            text, role = choice.get("text") or "", None
        finish = choice.get("finish_reason")
        logprobs = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None
        if text or role or finish or calls or logprobs:
            items.append(
                ChatChunk(
                    text=text,
                    index=choice.get("index", 0),
                    role=role,
                    finish_reason=finish,
                    tool_calls=calls,
                    logprobs=logprobs,
                )
            )
    usage = chunk.get("usage")
    if usage:
        items.append(
            Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                cached_tokens=int(
                    (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                ),
                reasoning_tokens=int(
                    (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
                ),
            )
        )
    return items
