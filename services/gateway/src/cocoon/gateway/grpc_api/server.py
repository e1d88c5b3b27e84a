"""`cocoon.inference.v1.Inference` (inference.proto): chat completions over gRPC, for backends.

The same path as `POST /v1/chat/completions` with `stream: true`: the request becomes the same
OpenAI body, validated by the same allow-list, authenticated and rate limited by the same
`Authenticator`, and submitted to the same backend (billing, placement, sealing, tracing are
the backend's). An error ends the call with the gRPC status mapped from its HTTP status, the
OpenAI error's `code`, `type` and `param` in the trailing metadata.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cocoon.core.request_ids import new_request_id
from cocoon.gateway.api.app import close_quietly, next_item
from cocoon.gateway.api.auth import ACCOUNT_HEADER, Authenticator
from cocoon.gateway.api.backend import ChatChunk, Embeddings, InferenceBackend, Usage
from cocoon.gateway.api.errors import ApiError, InvalidRequest, WorkerLost
from cocoon.gateway.api.settings import ApiSettings
from cocoon.gateway.api.sse import ResponseFormatter
from cocoon.gateway.api.validation import parse_body, to_inference_request
from cocoon.gateway.grpc_api import inference_pb2 as pb
from cocoon.gateway.grpc_api import inference_pb2_grpc as pb_grpc

# HTTP status of an OpenAI-style error -> the gRPC status a gRPC client expects for it.
GRPC_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    402: grpc.StatusCode.FAILED_PRECONDITION,  # the account's balance must change first
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,  # the worker was lost: a retry may be placed elsewhere
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
REQUEST_ID = "x-request-id"
# The typed fields of ChatCompletionRequest; `extra_json` may not repeat them.
_TYPED = ("model", "messages", "max_tokens", "temperature", "top_p", "seed", "stop")
_OPTIONAL = ("max_tokens", "temperature", "top_p", "seed", "max_coefficient")


def grpc_status(error: ApiError) -> grpc.StatusCode:
    return GRPC_STATUS.get(error.status, grpc.StatusCode.INTERNAL)


def openai_body(request: pb.ChatCompletionRequest) -> dict[str, Any]:
    """The HTTP API's request body for a gRPC request (always streamed, with usage)."""
    try:
        extra = json.loads(request.extra_json) if request.extra_json else {}
    except ValueError:
        raise InvalidRequest("extra_json is not valid JSON.", param="extra_json") from None
    if not isinstance(extra, dict):
        raise InvalidRequest("extra_json must be a JSON object.", param="extra_json")
    for name in (*_TYPED, "max_coefficient", "timeout", "stream", "stream_options"):
        if name in extra:
            raise InvalidRequest(
                f"{name} is a field of the request, not of extra_json.", param=name
            )
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(m) for m in request.messages],
    }
    for name in _OPTIONAL:
        if request.HasField(name):
            body[name] = getattr(request, name)
    if request.HasField("timeout_seconds"):
        body["timeout"] = request.timeout_seconds
    if request.stop:
        body["stop"] = list(request.stop)
    return {**body, **extra, "stream": True, "stream_options": {"include_usage": True}}


def _message(message: pb.Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls_json:
        try:
            out["tool_calls"] = json.loads(message.tool_calls_json)
        except ValueError:
            raise InvalidRequest("tool_calls_json is not valid JSON.", param="messages") from None
        out["content"] = message.content or None
    return out


def _delta(chunk: dict[str, Any]) -> pb.Delta:
    """A Delta from one chat completion chunk (ResponseFormatter's shape: one choice)."""
    (choice,) = chunk["choices"]
    delta = choice["delta"]
    return pb.Delta(
        index=choice["index"],
        content=delta.get("content") or "",
        finish_reason=choice["finish_reason"] or "",
        tool_calls=[
            pb.ToolCallDelta(
                index=call["index"],
                id=call.get("id") or "",
                name=call["function"].get("name") or "",
                arguments=call["function"].get("arguments") or "",
            )
            for call in delta.get("tool_calls") or ()
        ],
        logprobs_json=json.dumps(choice["logprobs"]) if choice["logprobs"] else "",
    )


def _usage(usage: Usage) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_prompt_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
    )


class InferenceService(pb_grpc.InferenceServicer):
    def __init__(
        self, backend: InferenceBackend, authenticator: Authenticator, settings: ApiSettings
    ) -> None:
        self.backend = backend
        self.authenticator = authenticator
        self.settings = settings

    def _authorize(self, context: grpc.aio.ServicerContext) -> Any:
        # Metadata keys are lower case; only `-bin` keys carry bytes.
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        return self.authenticator.authorize(
            metadata.get("authorization", ""), metadata.get(ACCOUNT_HEADER)
        )

    async def ChatCompletion(  # the RPC's name (inference.proto)
        self, request: pb.ChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatCompletionEvent]:
        request_id = str(uuid.uuid4())
        try:
            key = self._authorize(context)
            request_id = new_request_id(key.account_id)  # co-partitioned: billing's shard
            parsed = parse_body("chat.completions", json.dumps(openai_body(request)).encode())
            inference = to_inference_request("chat.completions", parsed, self.settings, request_id)
            fmt = ResponseFormatter(
                endpoint="chat.completions",
                response_id="chatcmpl-" + request_id.replace("-", ""),
                created=int(time.time()),
                model=parsed.model,
            )
            deadline = asyncio.get_running_loop().time() + inference.timeout
            items = aiter(self.backend.submit(key.account_id, inference))
            try:
                item = await next_item(items, deadline)
                if item is None:
                    raise WorkerLost("The worker ended the request without an answer.")
                await context.send_initial_metadata(((REQUEST_ID, request_id),))
                while item is not None:
                    for event in self._events(item, fmt):
                        yield pb.ChatCompletionEvent(id=request_id, **event)
                    item = await next_item(items, deadline)
            finally:
                await close_quietly(items)
        except ApiError as exc:
            await context.abort(
                grpc_status(exc),
                exc.message,
                trailing_metadata=(
                    (REQUEST_ID, request_id),
                    ("x-cocoon-error-type", exc.type),
                    ("x-cocoon-error-code", exc.code or ""),
                    ("x-cocoon-error-param", exc.param or ""),
                ),
            )

    @staticmethod
    def _events(
        item: ChatChunk | Embeddings | Usage, fmt: ResponseFormatter
    ) -> list[dict[str, Any]]:
        if isinstance(item, Embeddings):
            return []  # never part of a chat answer
        if isinstance(item, Usage):  # the last item: first close every unfinished choice
            closing = [{"delta": _delta(fmt.chunk(c))} for c in fmt.closing_chunks()]
            return [*closing, {"usage": _usage(item)}]
        if fmt.says_nothing(item):
            return []
        return [{"delta": _delta(fmt.chunk(item))}]

    async def ListModels(  # the RPC's name (inference.proto)
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        try:
            self._authorize(context)
        except ApiError as exc:
            await context.abort(grpc_status(exc), exc.message)
        models = sorted(await self.backend.models(), key=lambda m: m.id)
        return pb.ListModelsResponse(
            models=[
                pb.Model(
                    id=m.id,
                    created=m.created,
                    owned_by=m.owned_by,
                    attested_workers=m.attested_workers,
                    min_coefficient=m.min_coefficient or 0,
                )
                for m in models
                if m.attested_workers > 0
            ]
        )


def inference_server(
    service: InferenceService, host: str, port: int
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server with the Inference service on `host:port` (0: any free port), not started;
    and the port it bound."""
    server = grpc.aio.server()
    pb_grpc.add_InferenceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    return server, bound
