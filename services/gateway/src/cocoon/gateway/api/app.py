"""The OpenAI-compatible HTTP API: `create_app(backend, key_store, settings)`.

Every request is authenticated and rate limited per key, validated against the allow-list,
then handed to the backend. The first backend item is awaited before any response is sent,
so errors that stop a request from starting (402, 404, 503, 504) keep their status even when
the client asked for a stream; later failures become a final SSE error event.
"""

# No `from __future__ import annotations`: FastAPI must resolve the local `Authenticated`.
import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cocoon.client.openai_responses import (
    ResponseBuilder,
    ResponsesRequestError,
    chat_request,
    sse_event,
)
from cocoon.core.request_ids import account_partitions, is_co_partitioned
from cocoon.gateway.api.auth import ACCOUNT_HEADER, Authenticator
from cocoon.gateway.api.backend import ChatChunk, Embeddings, Endpoint, InferenceBackend, Usage
from cocoon.gateway.api.client_sealed import (
    SEALED_BY_HEADER,
    RelayedChunk,
    SealedSurface,
    parse_sealed,
)
from cocoon.gateway.api.embeddings import embeddings_response
from cocoon.gateway.api.errors import (
    ApiError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    UnknownModel,
    UpstreamTimeout,
    WorkerLost,
)
from cocoon.gateway.api.keys import KeyRecord, KeyStore
from cocoon.gateway.api.ratelimit import RateLimiter
from cocoon.gateway.api.request_id import HEADER as REQUEST_ID
from cocoon.gateway.api.request_id import RequestIdMiddleware, bind_to_account, name_request
from cocoon.gateway.api.settings import ApiSettings
from cocoon.gateway.api.sse import SSE_DONE, ResponseFormatter, sse_data, sse_error
from cocoon.gateway.api.validation import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse_body,
    to_inference_request,
)

log = logging.getLogger(__name__)

Item = ChatChunk | Embeddings | Usage
CLOSE_GRACE_S = 5.0


async def close_quietly(source: object) -> None:
    """`aclose()` the backend stream, even from a cancelled task (client gone), bounded in time.

    This is how the backend learns to cancel the work on the worker.
    """
    aclose = getattr(source, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_GRACE_S):
        await aclose()


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


def _http_error(exc: StarletteHTTPException, request: Request) -> ApiError:
    if exc.status_code == 404:
        return NotFound(f"Unknown route: {request.method} {request.url.path}")
    if exc.status_code == 405:
        not_allowed = MethodNotAllowed(
            f"Method {request.method} is not allowed on {request.url.path}"
        )
        # Starlette names the route's methods in an Allow header (RFC 9110 requires it).
        not_allowed.extra_headers.update(exc.headers or {})
        return not_allowed
    error = ApiError(str(exc.detail), code=f"http_{exc.status_code}")
    error.status = exc.status_code
    return error


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(_http_error(exc, request))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI would answer 422 in its own shape; clients of an OpenAI API expect 400.
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        return error_response(
            InvalidRequest(
                f"Invalid value for '{param}': {first.get('msg', 'invalid')}.", param=param
            )
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        error = InternalError("The gateway failed to handle this request.")
        # This handler runs outside every middleware, the request id's included.
        if (request_id := request.scope.get("state", {}).get(REQUEST_ID)) is not None:
            error.extra_headers[REQUEST_ID] = request_id
        return error_response(error)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise InvalidRequest(
            f"The request body is {declared} bytes; the limit is {limit}.",
            code="request_too_large",
        )
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise InvalidRequest(
                f"The request body exceeds {limit} bytes.", code="request_too_large"
            )
        parts.append(part)
    return b"".join(parts)


async def next_item(items: AsyncIterator[Item], deadline: float) -> Item | None:
    """The next backend item before `deadline` (loop time); None at the end."""
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        raise UpstreamTimeout()
    try:
        async with asyncio.timeout(remaining):
            return await anext(items)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise UpstreamTimeout() from None
    except ApiError:
        raise
    except Exception as exc:
        log.exception("backend failed", exc_info=exc)
        raise InternalError("The request failed inside the network.") from exc


async def collect(items: AsyncIterator[Item], deadline: float) -> list[Item]:
    """Every backend item of a request answered whole; the backend is closed either way."""
    try:
        collected = []
        while (item := await next_item(items, deadline)) is not None:
            collected.append(item)
    finally:
        await close_quietly(items)
    if not collected:
        raise WorkerLost("The worker ended the request without an answer.")
    return collected


async def event_stream(
    first: Item, items: AsyncIterator[Item], fmt: ResponseFormatter, deadline: float
) -> AsyncGenerator[bytes, None]:
    try:
        if event := fmt.stream_event(first):
            yield event
        while True:
            try:
                item = await next_item(items, deadline)
            except ApiError as exc:
                # The status line is gone: report in-band, then end the stream as usual.
                yield sse_error(exc)
                break
            if item is None:
                if closing := fmt.missing_finishes():
                    yield closing
                break
            if event := fmt.stream_event(item):
                yield event
        yield SSE_DONE
    finally:
        await close_quietly(items)


async def responses_stream(
    first: Item,
    items: AsyncIterator[Item],
    fmt: ResponseFormatter,
    builder: ResponseBuilder,
    deadline: float,
) -> AsyncGenerator[bytes, None]:
    """The Responses API's events for a streamed chat answer (no `[DONE]` in this API)."""
    try:
        events = builder.start()
        usage: dict[str, Any] | None = None
        item: Item | None = first
        while item is not None:
            if isinstance(item, Usage):
                usage = item.as_openai()
            elif isinstance(item, ChatChunk):  # (embeddings are never part of a chat answer)
                events += builder.on_chunk(fmt.chunk(item))
            yield b"".join(sse_event(event) for event in events)
            events = []
            try:
                item = await next_item(items, deadline)
            except ApiError as exc:
                # The status line is gone: the failure is the stream's last event.
                yield b"".join(sse_event(e) for e in builder.fail(exc.body()["error"]))
                return
        yield b"".join(sse_event(event) for event in builder.finish(usage))
    finally:
        await close_quietly(items)


def parse_responses_body(raw: bytes) -> tuple[dict[str, Any], ChatCompletionRequest]:
    """The Responses body and the chat request that answers it, or a 400 naming the param."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    try:
        chat = chat_request(body)
    except ResponsesRequestError as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None
    parsed = parse_body("chat.completions", json.dumps(chat).encode())
    assert isinstance(parsed, ChatCompletionRequest)
    return body, parsed


def create_app(
    backend: InferenceBackend,
    key_store: KeyStore,
    settings: ApiSettings | None = None,
    *,
    clock: Any = time.monotonic,
    sealed: SealedSurface | None = None,
    authenticator: Authenticator | None = None,
) -> FastAPI:
    """`sealed`: also serve the client-sealed interface (api/client_sealed.py); `authenticator`:
    the one shared with the gateway's other surfaces (else one of `key_store` is made)."""
    settings = settings or ApiSettings()
    if authenticator is None:
        limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst, clock)
        authenticator = Authenticator(key_store, limiter)
    app = FastAPI(title="Cocoon", summary="Confidential AI inference, OpenAI-compatible")
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)

    async def authenticate(request: Request) -> KeyRecord:
        authorization = request.headers.get("authorization", "")
        return authenticator.authorize(authorization, request.headers.get(ACCOUNT_HEADER))

    Authenticated = Annotated[KeyRecord, Depends(authenticate)]

    async def listed_models() -> list[dict[str, Any]]:
        models = sorted(await backend.models(), key=lambda m: m.id)
        return [
            {
                "id": m.id,
                "object": "model",
                "created": m.created,
                "owned_by": m.owned_by,
                "attested_workers": m.attested_workers,
                "min_coefficient": m.min_coefficient,
                "context_length": m.context_length,
                "capabilities": list(m.capabilities),
                "pricing": m.pricing,
            }
            for m in models
            if m.attested_workers > 0
        ]

    @app.get("/v1/models")
    async def list_models(_: Authenticated) -> dict[str, Any]:
        return {"object": "list", "data": await listed_models()}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, _: Authenticated) -> dict[str, Any]:
        for model in await listed_models():
            if model["id"] == model_id:
                return model
        raise UnknownModel(model_id)

    async def infer(
        endpoint: Endpoint,
        request: Request,
        key: KeyRecord,
        parsed: ChatCompletionRequest | CompletionRequest | EmbeddingRequest | None = None,
        responses: dict[str, Any] | None = None,
    ) -> Any:
        """Answer a chat or completions request; with `responses` (the Responses API body
        that `parsed` translates), answer in that API's shape."""
        if parsed is None:
            parsed = parse_body(endpoint, await read_body(request, settings.max_body_bytes))
        inference = to_inference_request(
            endpoint, parsed, settings, bind_to_account(request, key.account_id)
        )
        deadline = asyncio.get_running_loop().time() + inference.timeout
        # The gateway opened and sealed this request: say so (docs/sealed-requests.md).
        headers: dict[str, str] = {SEALED_BY_HEADER: "gateway"}
        if endpoint == "embeddings":
            whole = await collect(aiter(backend.submit(key.account_id, inference)), deadline)
            return JSONResponse(embeddings_response(whole, parsed.model), headers=headers)
        assert not isinstance(parsed, EmbeddingRequest)
        prefix = "chatcmpl-" if endpoint == "chat.completions" else "cmpl-"
        fmt = ResponseFormatter(
            endpoint=endpoint,
            response_id=prefix + inference.request_id.replace("-", ""),
            created=int(time.time()),
            model=parsed.model,
            include_usage=bool(parsed.stream_options and parsed.stream_options.include_usage),
        )
        builder = None
        if responses is not None:
            builder = ResponseBuilder(
                "resp_" + inference.request_id.replace("-", ""), fmt.created, responses
            )
        items = aiter(backend.submit(key.account_id, inference))
        try:
            first = await next_item(items, deadline)
            if first is None:
                raise WorkerLost("The worker ended the request without an answer.")
            if inference.stream:
                # Starlette cancels the generator when the client disconnects; its `finally`
                # then closes the backend stream.
                events = (
                    event_stream(first, items, fmt, deadline)
                    if builder is None
                    else responses_stream(first, items, fmt, builder, deadline)
                )
                return StreamingResponse(
                    events,
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
                )
            collected = [first]
            while (item := await next_item(items, deadline)) is not None:
                collected.append(item)
        except BaseException:
            await close_quietly(items)
            raise
        await close_quietly(items)
        answer = fmt.complete(collected)
        if builder is not None:
            answer = builder.complete(answer)
        return JSONResponse(answer, headers=headers)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, key: Authenticated) -> Any:
        return await infer("chat.completions", request, key)

    @app.post("/v1/completions")
    async def completions(request: Request, key: Authenticated) -> Any:
        return await infer("completions", request, key)

    @app.post("/v1/responses")
    async def responses(request: Request, key: Authenticated) -> Any:
        body, parsed = parse_responses_body(await read_body(request, settings.max_body_bytes))
        return await infer("chat.completions", request, key, parsed, responses=body)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request, key: Authenticated) -> Any:
        return await infer("embeddings", request, key)

    if sealed is not None:
        install_client_sealed(app, sealed, settings, Authenticated)
    return app


async def relay_events(
    first: RelayedChunk, chunks: AsyncIterator[RelayedChunk], deadline: float
) -> AsyncGenerator[bytes, None]:
    try:
        yield sse_data(first.event())
        while True:
            try:
                chunk = await next_item(chunks, deadline)  # type: ignore[arg-type]
            except ApiError as exc:
                yield sse_data({"type": "error", **exc.body()})
                return
            if chunk is None:
                return
            yield sse_data(chunk.event())  # type: ignore[union-attr]
    finally:
        await close_quietly(chunks)


def install_client_sealed(
    app: FastAPI, surface: SealedSurface, settings: ApiSettings, authenticated: Any
) -> None:
    """The routes of the client-sealed path; the gateway relays what it cannot read."""

    @app.get("/v1/cocoon/workers")
    async def sealed_workers(model: str) -> dict[str, Any]:
        return {"model": model, "workers": surface.workers(model)}

    @app.get("/v1/cocoon/registry")
    async def sealed_registry() -> dict[str, Any]:
        return {"entries": surface.registry(), "registry_public_key": surface.registry_public_key}

    @app.get("/v1/cocoon/collateral/{fmspc}")
    async def sealed_collateral(fmspc: str) -> dict[str, Any]:
        doc = surface.collateral(fmspc)
        if doc is None:
            raise NotFound(f"No collateral for FMSPC {fmspc}.")
        return {"fmspc": fmspc.lower(), "collateral": doc}

    @app.get("/v1/cocoon/statement")
    async def sealed_statement(key: authenticated, since: int = 0) -> dict[str, Any]:
        # The charges of the key's own account only: what `cocoon client audit` checks.
        return {
            "account_id": key.account_id,
            "since": since,
            "charges": await surface.charges(key.account_id, since),
        }

    @app.get("/v1/cocoon/account")
    async def sealed_account(key: authenticated) -> dict[str, Any]:
        # What a client needs to mint request ids co-partitioned with the account it bills.
        return {"account_id": key.account_id, "request_id_partitions": account_partitions()}

    @app.post("/v1/cocoon/sealed")
    async def sealed_request(request: Request, key: authenticated) -> Any:
        sealed = parse_sealed(await read_body(request, settings.max_body_bytes), settings)
        name_request(request, sealed.request.request_id)  # the answer names the client's id
        if not is_co_partitioned(sealed.request.request_id, key.account_id):
            raise InvalidRequest(
                "request_id is not co-partitioned with the account it bills: mint it for the "
                "account and partition count GET /v1/cocoon/account names.",
                param="request_id",
                code="request_id_not_co_partitioned",
            )
        deadline = asyncio.get_running_loop().time() + sealed.request.timeout
        chunks = aiter(surface.relay(key.account_id, sealed))
        try:
            first = await next_item(chunks, deadline)  # type: ignore[arg-type]
            if first is None:
                raise WorkerLost("The worker ended the request without an answer.")
        except BaseException:
            await close_quietly(chunks)
            raise
        return StreamingResponse(
            relay_events(first, chunks, deadline),  # type: ignore[arg-type]
            media_type="text/event-stream",
            headers={
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                SEALED_BY_HEADER: "client",
            },
        )
