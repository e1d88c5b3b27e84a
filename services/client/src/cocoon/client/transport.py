"""An `httpx` transport that seals OpenAI requests itself: plug it into the `openai` SDK.

    session = SealedSession(gateway_url, api_key, load_config(gateway=gateway_url))
    client = openai.AsyncOpenAI(
        base_url="http://cocoon.local/v1", api_key="unused",
        http_client=httpx.AsyncClient(transport=SealingTransport(session)),
    )

`/v1/chat/completions`, `/v1/completions` and `/v1/embeddings` are sealed here to workers this
process verified; so is `/v1/responses`, translated to a chat request here, before sealing, and
its answer back (cocoon.client.openai_responses); `/v1/models` goes to the gateway as it is.
Every response carries `X-Cocoon-Sealed-By: client` and, when the configuration trusts a
development root, `X-Cocoon-Trust-Root: development`.
The local proxy (`cocoon client serve`) serves this transport over HTTP.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from cocoon.client.errors import GatewayError, NoTrustedWorker, WireError
from cocoon.client.openai_format import Formatter, embeddings_response, error_body, sse
from cocoon.client.openai_responses import (
    ResponseBuilder,
    ResponsesRequestError,
    chat_request,
    sse_event,
)
from cocoon.client.session import SealedSession

log = logging.getLogger(__name__)

SEALED_BY_HEADER = "X-Cocoon-Sealed-By"
TRUST_ROOT_HEADER = "X-Cocoon-Trust-Root"
REQUEST_ID_HEADER = "x-request-id"
RESPONSES_PATH = "/v1/responses"  # answered with a chat completion, translated both ways
ENDPOINTS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    RESPONSES_PATH: "chat.completions",
}


class _Events(httpx.AsyncByteStream):
    def __init__(self, events: AsyncIterator[bytes]) -> None:
        self._events = events

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for event in self._events:
            yield event

    async def aclose(self) -> None:
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()


def _failure(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """An OpenAI-shaped error for anything that stopped a sealed request, and the headers a
    client needs to act on it (the gateway's Retry-After: SDKs wait that long to retry)."""
    if isinstance(exc, GatewayError):
        headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
        if exc.should_retry:
            headers["x-should-retry"] = exc.should_retry
        return exc.status, exc.body, headers
    if isinstance(exc, NoTrustedWorker):
        return 503, error_body(str(exc), type_="server_error", code="no_trusted_worker"), {}
    body = error_body(
        f"The sealed answer failed verification: {exc}", type_="server_error", code="bad_answer"
    )
    return 502, body, {}


class SealingTransport(httpx.AsyncBaseTransport):
    def __init__(self, session: SealedSession) -> None:
        self.session = session
        roots = session.config.development_roots
        self.headers = {SEALED_BY_HEADER: "client"}
        if roots:
            self.headers[TRUST_ROOT_HEADER] = "development: " + ", ".join(r.name for r in roots)

    def _json(
        self, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return httpx.Response(status, json=body, headers={**self.headers, **(headers or {})})

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # Every answer names its request, as the gateway's do: for a sealed request it is the
        # id the gateway, the bus and the worker's receipt know it by.
        request_id = str(uuid.uuid4())
        try:
            if request.method == "POST" and request.url.path.rstrip("/") in ENDPOINTS:
                # Billed: co-partitioned with the key's account (the gateway requires it).
                request_id = await self.session.new_request_id(_bearer(request))
        except (GatewayError, WireError) as exc:
            response = self._json(*_failure(exc))
        else:
            response = await self._handle(request, request_id)
        response.headers.setdefault(REQUEST_ID_HEADER, request_id)
        return response

    async def _handle(self, request: httpx.Request, request_id: str) -> httpx.Response:
        path = request.url.path.rstrip("/")
        key = _bearer(request)
        allowed = "GET" if path.startswith("/v1/models") else "POST"
        if request.method != allowed and (path in ENDPOINTS or allowed == "GET"):
            return self._json(
                405,
                error_body(
                    f"Method {request.method} is not allowed on {path}",
                    type_="invalid_request_error",
                    code="method_not_allowed",
                ),
                {"Allow": allowed},
            )
        if allowed == "GET":
            upstream = await self.session.api.models(path, api_key=key)
            return httpx.Response(
                upstream.status_code,
                content=upstream.content,
                headers={
                    **self.headers,
                    "Content-Type": "application/json",
                    # The gateway's own id for this call, for its logs.
                    REQUEST_ID_HEADER: upstream.headers.get(REQUEST_ID_HEADER, request_id),
                },
            )
        endpoint = ENDPOINTS.get(path)
        if endpoint is None:
            return self._json(
                404,
                error_body(
                    f"Unknown route: {request.method} {path}",
                    type_="invalid_request_error",
                    code="not_found",
                ),
            )
        try:
            body = json.loads(await request.aread())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._json(
                400,
                error_body(
                    "The request body must be a JSON object.",
                    type_="invalid_request_error",
                    code="invalid_json",
                ),
            )
        if endpoint == "embeddings":
            return await self._embeddings(body, key, request_id)
        builder = None
        if path == RESPONSES_PATH:
            try:
                body, asked = chat_request(body), body
            except ResponsesRequestError as exc:
                invalid = error_body(
                    str(exc), type_="invalid_request_error", code="invalid_request", param=exc.param
                )
                return self._json(400, invalid)
            response_id = "resp_" + request_id.replace("-", "")
            builder = ResponseBuilder(response_id, int(time.time()), asked)
        stream = body.get("stream") is True
        options = body.get("stream_options")
        if options is not None and not stream:
            return self._json(
                400,
                error_body(
                    "stream_options is only allowed when stream is true.",
                    type_="invalid_request_error",
                    code="invalid_request",
                    param="stream_options",
                ),
            )
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        fmt = Formatter(endpoint, str(body.get("model", "")), include_usage)
        chunks = aiter(self.session.stream(endpoint, body, api_key=key, request_id=request_id))
        pending: list[dict[str, Any]] = []
        try:
            # Wait for the first piece, so errors that stop the request keep their status.
            while not pending:
                engine_chunk = await anext(chunks, None)
                if engine_chunk is None:
                    break
                pending = fmt.take(engine_chunk)
        except (GatewayError, NoTrustedWorker, WireError) as exc:
            return self._json(*_failure(exc))
        if not stream:
            try:
                async for engine_chunk in chunks:
                    fmt.take(engine_chunk)
            except (GatewayError, NoTrustedWorker, WireError) as exc:
                return self._json(*_failure(exc))
            answer = fmt.complete()
            return self._json(200, answer if builder is None else builder.complete(answer))
        events = (
            _sse_events(pending, chunks, fmt)
            if builder is None
            else _responses_events(pending, chunks, fmt, builder)
        )
        return httpx.Response(
            200,
            headers={
                **self.headers,
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
            },
            stream=_Events(events),
        )

    async def _embeddings(
        self, body: dict[str, Any], key: str | None, request_id: str
    ) -> httpx.Response:
        """Answered whole, never streamed (as OpenAI's API)."""
        chunks = self.session.stream("embeddings", body, api_key=key, request_id=request_id)
        try:
            answer = [chunk async for chunk in chunks]
            return self._json(200, embeddings_response(answer, str(body.get("model", ""))))
        except (GatewayError, NoTrustedWorker, WireError) as exc:
            return self._json(*_failure(exc))
        except ValueError as exc:
            return self._json(*_failure(WireError(str(exc))))


async def _sse_events(
    pending: list[dict[str, Any]], chunks: AsyncIterator[dict[str, Any]], fmt: Formatter
) -> AsyncIterator[bytes]:
    try:
        for obj in pending:
            yield sse(obj)
        try:
            async for engine_chunk in chunks:
                for obj in fmt.take(engine_chunk):
                    yield sse(obj)
        except (GatewayError, NoTrustedWorker, WireError) as exc:
            # The status line is gone: report in-band, then end the stream as OpenAI does.
            yield sse(_failure(exc)[1])
        else:
            for obj in fmt.closing_chunks():
                yield sse(obj)
        yield sse("[DONE]")
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def _responses_events(
    pending: list[dict[str, Any]],
    chunks: AsyncIterator[dict[str, Any]],
    fmt: Formatter,
    builder: ResponseBuilder,
) -> AsyncIterator[bytes]:
    """The Responses API's events for the chat chunks (no `[DONE]` in this API)."""
    usage: dict[str, Any] | None = None

    def translate(objs: list[dict[str, Any]]) -> bytes:
        nonlocal usage
        events = []
        for obj in objs:
            if obj.get("usage"):  # the usage chunk (empty choices)
                usage = obj["usage"]
            events += builder.on_chunk(obj)
        return b"".join(sse_event(event) for event in events)

    try:
        yield b"".join(sse_event(event) for event in builder.start()) + translate(pending)
        try:
            async for engine_chunk in chunks:
                yield translate(fmt.take(engine_chunk))
        except (GatewayError, NoTrustedWorker, WireError) as exc:
            # The status line is gone: the failure is the stream's last event.
            yield b"".join(sse_event(e) for e in builder.fail(_failure(exc)[1]["error"]))
            return
        closing = translate(fmt.closing_chunks())
        yield closing + b"".join(sse_event(event) for event in builder.finish(usage))
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _bearer(request: httpx.Request) -> str | None:
    """A Cocoon API key the caller sent (else the proxy's own key is used)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token.startswith("sk-cocoon-") else None
