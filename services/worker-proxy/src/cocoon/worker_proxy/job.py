"""One WorkItem RUN, from sealed request to signed receipt (one asyncio task per request).

    wait for a slot -> open (HPKE) -> engine stream -> sealed records -> final chunk
                    -> signed UsageReceipt -> Outcome

The first engine chunk worth forwarding is sealed and sent at once; later ones are coalesced:
everything the engine produces within `chunk_linger_s` of the first pending one goes out as one
sealed record (the plaintext is the chunks' JSON documents, one per line), so a token is not a
Kafka record, an AEAD and an Avro encoding of its own (docs/sealed-requests.md, "The answer").
Embeddings take the same path: the engine answers them whole (OpenAI does not stream them), and
the worker seals its `data` in records of bounded size (not coalesced), then the final record
with the usage.

The plaintext body and every engine chunk exist only in this task's memory; what it sends is
ciphertext and metadata. A CANCEL or the deadline stops the engine stream (closing the HTTP
response stops the generation) and still ends the sealed stream, signs a receipt for the tokens
produced so far (`completed=false`), and reports the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from cocoon.core.bus import BusProducer
from cocoon.core.capabilities import CHAT, TOOLS, serves
from cocoon.core.codec import models
from cocoon.core.codec.timestamps import epoch_millis, now_millis
from cocoon.core.contracts import ErrorCode, Topic
from cocoon.core.crypto import (
    OpenError,
    ResponseSealer,
    SealedRequest,
    SignedReceipt,
    UsageReceipt,
    open_request,
    sign_receipt,
)
from cocoon.core.crypto.client_seal import client_stream_key, open_client_request
from cocoon.core.crypto.keys import HpkeSuite
from cocoon.core.worker_records import sign_record
from cocoon.worker_proxy import chunks
from cocoon.worker_proxy.engine import EngineClient, EngineError, EngineProtocolError
from cocoon.worker_proxy.identity import Identity
from cocoon.worker_proxy.receipts_log import ReceiptLog

log = logging.getLogger(__name__)

REPORTED_BY = "worker-proxy"

# Outcome error codes (metadata only, never content): schemas/error_codes.yaml.
UNSEALABLE = ErrorCode.UNSEALABLE
WRONG_MODEL = ErrorCode.WRONG_MODEL
BAD_REQUEST = ErrorCode.BAD_REQUEST
ENGINE_REJECTED = ErrorCode.ENGINE_REJECTED
ENGINE_ERROR = ErrorCode.ENGINE_ERROR
CANCELLED = ErrorCode.CANCELLED
TIMED_OUT = ErrorCode.TIMED_OUT


def engine_error_code(exc: BaseException) -> ErrorCode:
    """4xx from the engine means the request was refused, anything else that the engine failed."""
    status = exc.status if isinstance(exc, EngineError) else None
    return ENGINE_REJECTED if status is not None and 400 <= status < 500 else ENGINE_ERROR


@dataclass(frozen=True)
class JobContext:
    """What every job shares: identity, engine, producer, the slot semaphore, the receipt log."""

    identity: Identity
    engine: EngineClient
    producer: BusProducer
    slots: asyncio.Semaphore
    engine_model: str  # the name the engine knows the model by
    receipts: ReceiptLog | None = None  # the owner's copy of each signed receipt
    # How long a chunk after the first may wait for others to share its sealed record.
    chunk_linger_s: float = 0.005
    # What the model serves (Heartbeat.capabilities); a request for anything else is refused.
    capabilities: frozenset[str] = frozenset({CHAT, TOOLS})


@dataclass
class JobResult:
    status: str  # models.OutcomeStatus symbol
    error_code: str | None
    completion_tokens: int
    receipt: SignedReceipt | None


class Job:
    def __init__(self, item: models.WorkItem, ctx: JobContext) -> None:
        self.item = item
        self.ctx = ctx
        self.received_ms = now_millis()
        self.first_chunk_ms: int | None = None
        self.running = False  # holds an engine slot
        self._cancel = asyncio.Event()
        self._sealer: ResponseSealer | None = None
        self._enqueued: list[asyncio.Future] = []  # per record: producer.send -> delivery
        self._pending: list[bytes] = []  # encoded chunks waiting for the next record
        self._flush_timer: asyncio.TimerHandle | None = None

    @property
    def request_id(self) -> str:
        return self.item.request_id

    def cancel(self) -> None:
        """CANCEL from the gateway: stop the engine, end the stream, receipt what was produced."""
        self._cancel.set()

    # -- the task ------------------------------------------------------------------------------
    async def run(self) -> JobResult:
        item, identity = self.item, self.ctx.identity
        if item.model != identity.model:
            return await self._finish("FAILED", WRONG_MODEL, None, None)
        try:
            body, response_key = self._open()
        except OpenError:
            # Without the response key nothing can be sealed back: report, never log the payload.
            return await self._finish("FAILED", UNSEALABLE, None, None)
        self._sealer = ResponseSealer(response_key, item.request_id)
        try:
            request = chunks.engine_request(
                body, model=self.ctx.engine_model, max_tokens=item.max_tokens
            )
        except chunks.BadRequestBody as exc:
            await self._seal_error(BAD_REQUEST, str(exc), error_type=chunks.INVALID_REQUEST)
            return await self._finish("FAILED", BAD_REQUEST, None, None)
        del body
        if not serves(self.ctx.capabilities, request.endpoint):
            # The client-sealed path reaches here without the gateway's check (it cannot read
            # the body); the gateway's own path never sends such a request.
            message = f"The model {item.model} does not serve {request.endpoint}."
            await self._seal_error(BAD_REQUEST, message, error_type=chunks.INVALID_REQUEST)
            return await self._finish("FAILED", BAD_REQUEST, None, None)
        return await self._serve(request)

    def _open(self) -> tuple[bytes, bytes]:
        """(body, response key): sealed by the gateway to this worker, or by the client to its
        candidates (then the response key is derived for this worker and attempt)."""
        item, identity = self.item, self.ctx.identity
        if item.sealed_body is None:
            return open_request(
                identity.keys,
                item.request_id,
                identity.worker_id,
                item.model,
                SealedRequest.from_record(item.to_avro()),
            )
        try:
            suite = HpkeSuite(item.hpke_suite or "")
        except ValueError:
            raise OpenError(f"unknown HPKE suite {item.hpke_suite!r}") from None
        body, request_key = open_client_request(
            identity.keys,
            request_id=item.request_id,
            worker_id=identity.worker_id,
            model=item.model,
            suite=suite,
            enc=item.hpke_enc or b"",
            wrapped_key=item.sealed_request or b"",
            ciphertext=item.sealed_body,
        )
        key = client_stream_key(request_key, item.request_id, identity.worker_id, item.attempt)
        return body, key

    async def _serve(self, request: chunks.EngineRequest) -> JobResult:
        meter = chunks.UsageMeter()
        deadline_s = max(0.0, (epoch_millis(self.item.deadline_at) - now_millis()) / 1000)
        stop = asyncio.ensure_future(self._cancel.wait())
        slot = asyncio.ensure_future(self.ctx.slots.acquire())
        stream: asyncio.Future | None = None
        started_ms = finished_ms = 0
        code: ErrorCode | None
        try:
            # Waiting for a slot counts against the deadline and can be cancelled too.
            done, _ = await asyncio.wait(
                {slot, stop}, timeout=deadline_s, return_when=asyncio.FIRST_COMPLETED
            )
            if slot not in done:
                status, code = (
                    ("CANCELLED", CANCELLED) if stop in done else ("TIMED_OUT", TIMED_OUT)
                )
                message = (
                    _messages[CANCELLED] if stop in done else "the deadline passed before it ran"
                )
                await self._seal_error(code, message)
                return await self._finish(status, code, None, None)
            self.running = True
            started_ms = now_millis()
            stream = asyncio.ensure_future(self._stream(request, meter))
            remaining = max(0.0, (epoch_millis(self.item.deadline_at) - now_millis()) / 1000)
            done, _ = await asyncio.wait(
                {stream, stop}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if stream in done:
                error = stream.exception()
                status, code = ("SUCCEEDED", None) if error is None else ("FAILED", None)
                if error is not None:
                    code = engine_error_code(error)
                    # Type and status only: an engine's error text may quote the prompt.
                    log.warning(
                        "engine stream failed",
                        extra={
                            "request_id": self.request_id,
                            "error_type": type(error).__name__,
                            "engine_status": getattr(error, "status", None),
                        },
                    )
            else:
                # Cancel the stream task: its `async with` closes the engine response.
                stream.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await stream
                status, code = (
                    ("CANCELLED", CANCELLED) if stop in done else ("TIMED_OUT", TIMED_OUT)
                )
            finished_ms = now_millis()
            receipt = self._receipt(meter, status == "SUCCEEDED", started_ms, finished_ms)
            # The final chunk carries the signed receipt, so the client holds the worker's own
            # account of what it will be charged for (docs/sealed-requests.md).
            if status == "SUCCEEDED":
                final = meter.usage_chunk(request.endpoint)
                await self._seal_final(chunks.encode(with_receipt(final, receipt)))
            elif self._sealer is not None and not self._sealer.finished:
                assert code is not None  # a failed stream always has its engine_error_code
                if code == ENGINE_REJECTED:
                    # The request's own fault: the client gets the engine's reason (sealed to
                    # it, never logged here) and the gateway answers 400, not a lost worker.
                    refusal = stream.exception()
                    reason = getattr(refusal, "reason", "") or _messages[code]
                    param = getattr(refusal, "param", None)
                    chunk = chunks.error_chunk(code, reason, chunks.INVALID_REQUEST, param)
                else:
                    chunk = chunks.error_chunk(code, _messages[code])
                sealed_error = with_receipt(chunk, receipt)
                await self._seal_final(chunks.encode(sealed_error), error_code=code)
            return await self._finish(status, code, meter, receipt)
        finally:
            stop.cancel()
            if self._flush_timer is not None:
                self._flush_timer.cancel()
            if stream is not None and not stream.done():
                stream.cancel()  # the job itself was cancelled (shutdown past the grace period)
            if slot.done() and not slot.cancelled():
                self.running = False
                self.ctx.slots.release()
            else:
                slot.cancel()

    async def _stream(self, request: chunks.EngineRequest, meter: chunks.UsageMeter) -> None:
        engine = self.ctx.engine
        if request.endpoint == "embeddings":
            response = await engine.embeddings(request.body)
            meter.observe(response)  # its usage: the input tokens the receipt signs
            try:
                pieces = chunks.embedding_pieces(response)
            except ValueError as exc:
                raise EngineProtocolError(str(exc)) from None
            for piece in pieces:
                # Each piece is already as large as a record should be: none is coalesced.
                self._send_record(chunks.encode(piece), final=False, error_code=None)
            return
        opened = (
            engine.open_chat_stream(request.body)
            if request.endpoint == "chat.completions"
            else engine.open_completion_stream(request.body)
        )
        async with opened as engine_chunks:
            async for chunk in engine_chunks:
                forward = meter.observe(chunk)
                if forward is not None:
                    self._forward(chunks.encode(forward))

    # -- sending -------------------------------------------------------------------------------
    def _forward(self, plaintext: bytes) -> None:
        """Send the first chunk now; hold later ones until the linger runs out."""
        if self.first_chunk_ms is None:
            self._send_record(plaintext, final=False, error_code=None)
            return
        self._pending.append(plaintext)
        if self._flush_timer is None:
            # With a linger of 0 this still gathers every chunk the engine's response had
            # already delivered: the timer runs only once the stream waits for more.
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self.ctx.chunk_linger_s, self._flush)

    def _flush(self) -> None:
        """Seal what is pending as one record (chunks joined by newlines: JSON has none)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._pending:
            plaintext, self._pending = b"\n".join(self._pending), []
            self._send_record(plaintext, final=False, error_code=None)

    async def _seal_final(self, plaintext: bytes, error_code: str | None = None) -> None:
        """Seal the closing record: what is pending goes out first, then `plaintext`, final."""
        self._flush()
        self._send_record(plaintext, final=True, error_code=error_code)
        # The final record waits for every earlier record's delivery and its own.
        enqueued, self._enqueued = self._enqueued, []
        await asyncio.gather(*enqueued)
        await asyncio.gather(*(task.result() for task in enqueued))

    def _send_record(self, plaintext: bytes, *, final: bool, error_code: str | None) -> None:
        """Seal `plaintext` with the next seq and hand it to the producer, in seal order."""
        assert self._sealer is not None
        sealed = self._sealer.seal(plaintext, final=final)
        value = {
            "request_id": self.item.request_id,
            "worker_id": self.ctx.identity.worker_id,
            "attempt": self.item.attempt,
            "gateway_id": self.item.gateway_id,
            "seq": sealed.seq,
            "final": sealed.final,
            "ciphertext": sealed.ciphertext,
            "error_code": error_code,
            "produced_at": now_millis(),
        }
        if self.first_chunk_ms is None:
            self.first_chunk_ms = now_millis()
        # Records go out without waiting for each ack (the idempotent producer keeps one key's
        # records in order). The send is its own task, so cancelling the job cannot leave a
        # sealed record unsent: that would be a gap the gateway must refuse.
        self._enqueued.append(
            asyncio.ensure_future(
                self.ctx.producer.send(Topic.INFERENCE_RESPONSES, value, wait=False)
            )
        )

    async def _seal_error(self, code: str, message: str, error_type: str | None = None) -> None:
        if self._sealer is not None and not self._sealer.finished:
            chunk = chunks.error_chunk(code, message, error_type)
            await self._seal_final(chunks.encode(chunk), error_code=code)

    def _receipt(
        self, meter: chunks.UsageMeter, completed: bool, started_ms: int, finished_ms: int
    ) -> SignedReceipt:
        item = self.item
        receipt = UsageReceipt(
            receipt_id=f"{item.request_id}:{item.attempt}",
            request_id=item.request_id,
            attempt=item.attempt,
            worker_id=self.ctx.identity.worker_id,
            model=item.model,
            prompt_tokens=meter.prompt_tokens,
            cached_prompt_tokens=meter.cached_prompt_tokens,
            completion_tokens=meter.completion,
            reasoning_tokens=min(meter.reasoning_tokens, meter.completion),
            coefficient=item.coefficient,
            completed=completed,
            started_at=started_ms,
            finished_at=finished_ms,
        )
        return sign_receipt(self.ctx.identity.keys, receipt)

    async def _finish(
        self,
        status: str,
        code: str | None,
        meter: chunks.UsageMeter | None,
        receipt: SignedReceipt | None,
    ) -> JobResult:
        """Receipt first (billing captures from it), then the outcome (which releases the rest)."""
        item = self.item
        if receipt is not None:
            if self.ctx.receipts is not None:
                self.ctx.receipts.append(receipt)
            await self.ctx.producer.send(Topic.USAGE_RECEIPTS, receipt.to_record())
        finished = now_millis()
        completion = meter.completion if meter is not None else 0
        outcome = models.Outcome.from_avro(
            {
                "request_id": item.request_id,
                "attempt": item.attempt,
                "worker_id": self.ctx.identity.worker_id,
                "model": item.model,
                "status": status,
                "error_code": code,
                "reported_by": REPORTED_BY,
                "time_to_first_chunk_ms": (
                    None if self.first_chunk_ms is None else self.first_chunk_ms - self.received_ms
                ),
                "duration_ms": finished - self.received_ms,
                "completion_tokens": completion,
                "finished_at": finished,
            }
        )
        # Signed, so no other worker can end this attempt in our name (worker_records.py).
        outcome = sign_record(self.ctx.identity.keys, outcome)
        await self.ctx.producer.send(Topic.INFERENCE_OUTCOMES, outcome)
        return JobResult(status, code, completion, receipt)


def with_receipt(chunk: dict, receipt: SignedReceipt) -> dict:
    """`chunk` with the worker's signed usage receipt as the Cocoon extension `cocoon_receipt`."""
    fields = receipt.receipt.fields()
    return {
        **chunk,
        "cocoon_receipt": {
            **fields,
            "signing_key": receipt.signing_key.hex(),
            "signature": receipt.signature.hex(),
        },
    }


_messages = {
    CANCELLED: "the request was cancelled",
    TIMED_OUT: "the request deadline passed",
    ENGINE_ERROR: "the inference engine failed",
    ENGINE_REJECTED: "the inference engine refused the request",
}
