"""The worker-proxy's client for its inference engine: the OpenAI HTTP API and nothing else.

Works the same against vLLM, SGLang, llama.cpp's servers or anything else that speaks
`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` and `/v1/models`. Streams always ask for
`stream_options.include_usage`, because billing charges from the engine's `usage`; whether the
client sees that last usage chunk is the gateway's business, not the engine's.

Cancellation: leaving `open_chat_stream(...)` (or closing / cancelling `stream_chat(...)`) closes
the HTTP connection, which is how an OpenAI-compatible server learns to stop generating.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx


class EngineError(Exception):
    """The engine failed; `status` is its HTTP status when it answered with one, `reason` its
    own explanation (for the client when the request was at fault: it may quote the prompt),
    `param` the request parameter it named, if any."""

    def __init__(
        self, message: str, status: int | None = None, reason: str = "", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.param = param


class EngineUnavailableError(EngineError):
    """Nothing answers at the engine's URL (down, starting, wrong port)."""


class EngineTimeoutError(EngineError):
    """The engine accepted the call but did not answer (or went silent mid-stream) in time."""


class EngineProtocolError(EngineError):
    """The engine answered something that is not the OpenAI API (bad JSON, stream cut short)."""


@dataclass(frozen=True)
class EngineUsage:
    """Token counts by billing category, from an OpenAI `usage` object."""

    prompt_tokens: int  # including cached
    cached_tokens: int  # prompt_tokens_details.cached_tokens
    completion_tokens: int  # including reasoning
    reasoning_tokens: int  # completion_tokens_details.reasoning_tokens

    @classmethod
    def from_openai(cls, usage: dict[str, Any]) -> EngineUsage:
        def count(value: Any) -> int:
            return value if isinstance(value, int) and value >= 0 else 0

        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        prompt = count(usage.get("prompt_tokens"))
        completion = count(usage.get("completion_tokens"))
        return cls(
            prompt_tokens=prompt,
            cached_tokens=min(count(prompt_details.get("cached_tokens")), prompt),
            completion_tokens=completion,
            reasoning_tokens=min(count(completion_details.get("reasoning_tokens")), completion),
        )


def usage_of(payload: dict[str, Any]) -> EngineUsage | None:
    """The usage in a response or stream chunk, if it carries one."""
    usage = payload.get("usage")
    return EngineUsage.from_openai(usage) if isinstance(usage, dict) else None


def _error_param(raw: bytes) -> str | None:
    """The parameter an OpenAI-shaped error names (`error.param`), if any."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) else None


def _error_message(status: int, raw: bytes) -> str:
    # OpenAI shape {"error": {"message"}}, FastAPI shape {"detail"}, or plain text.
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:500] or f"HTTP {status}"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if "detail" in data:
            return json.dumps(data["detail"])[:500]
    return json.dumps(data)[:500]


def _stream_body(body: dict[str, Any]) -> dict[str, Any]:
    options = dict(body.get("stream_options") or {})
    options["include_usage"] = True
    return {**body, "stream": True, "stream_options": options}


class EngineStream:
    """One streamed call: an async iterator of parsed chunks, and an async context manager.

    After the stream ends, `usage`, `finish_reason` and the timings are filled in.
    """

    def __init__(self, client: EngineClient, path: str, body: dict[str, Any]) -> None:
        self._client = client
        self._path = path
        self._body = _stream_body(body)
        self._context: Any = None
        self._response: httpx.Response | None = None
        self._events: AsyncIterator[str] | None = None
        self.usage: EngineUsage | None = None
        self.finish_reason: str | None = None
        self.done = False  # the engine sent [DONE]
        self.started_at = 0.0  # time.monotonic() when the request was sent
        self.first_token_at: float | None = None  # first chunk with generated text

    async def __aenter__(self) -> EngineStream:
        self.started_at = time.monotonic()
        self._context = self._client._http.stream("POST", self._path, json=self._body)
        try:
            self._response = await self._client._guard(self._context.__aenter__())
        except BaseException:
            self._context = None
            raise
        if self._response.status_code >= 400:
            raw = await self._response.aread()
            await self.aclose()
            status = self._response.status_code
            reason = _error_message(status, raw)
            raise EngineError(
                f"engine refused {self._path}: HTTP {status}: {reason}",
                status,
                reason,
                _error_param(raw),
            )
        self._events = self._sse_data()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection; an unfinished generation is thereby cancelled."""
        context, self._context = self._context, None
        if context is not None:
            await context.__aexit__(None, None, None)

    async def _sse_data(self) -> AsyncIterator[str]:
        assert self._response is not None
        data: list[str] = []
        async for line in self._response.aiter_lines():
            if line == "":
                if data:
                    yield "\n".join(data)
                    data = []
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            # Comments (": ping"), event: and id: lines carry nothing we need.
        if data:
            yield "\n".join(data)

    def __aiter__(self) -> EngineStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._events is None:
            raise RuntimeError("use `async with client.open_chat_stream(body) as stream`")
        if self.done:
            raise StopAsyncIteration
        try:
            data = await self._client._guard(anext(self._events))
        except StopAsyncIteration:
            raise EngineProtocolError("engine stream ended without [DONE]") from None
        if data.strip() == "[DONE]":
            self.done = True
            raise StopAsyncIteration
        try:
            chunk = json.loads(data)
        except ValueError:
            raise EngineProtocolError(f"engine sent a non-JSON event: {data[:200]!r}") from None
        if not isinstance(chunk, dict):
            raise EngineProtocolError("engine sent a non-object event")
        if "error" in chunk:  # vLLM and others report mid-stream failures this way
            raise EngineError(f"engine failed mid-stream: {_error_message(500, data.encode())}")
        self._observe(chunk)
        return chunk

    def _observe(self, chunk: dict[str, Any]) -> None:
        usage = usage_of(chunk)
        if usage is not None:
            self.usage = usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("reasoning_content") or choice.get("text")
            if text and self.first_token_at is None:
                self.first_token_at = time.monotonic()
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]


class EngineClient:
    """OpenAI-API client for one engine at `base_url` (which ends in `/v1`)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        connect_timeout: float = 5.0,
        idle_timeout: float = 60.0,
        max_connections: int = 64,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            # `read` bounds the wait for each piece of data: the time to first token, and the
            # silence between chunks, not the whole generation.
            timeout=httpx.Timeout(idle_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _guard(self, awaitable: Any) -> Any:
        """Await `awaitable`, turning transport failures into EngineErrors that say what broke."""
        try:
            return await awaitable
        except httpx.ConnectError as exc:
            raise EngineUnavailableError(
                f"engine at {self.base_url} is unreachable: {exc}"
            ) from exc
        except httpx.TimeoutException as exc:
            raise EngineTimeoutError(
                f"engine at {self.base_url} timed out ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise EngineProtocolError(
                f"engine at {self.base_url} broke the connection: {type(exc).__name__}: {exc}"
            ) from exc

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._guard(self._http.post(path, json=body))
        if response.status_code >= 400:
            status = response.status_code
            reason = _error_message(status, response.content)
            raise EngineError(
                f"engine refused {path}: HTTP {status}: {reason}",
                status,
                reason,
                _error_param(response.content),
            )
        try:
            data = response.json()
        except ValueError:
            raise EngineProtocolError(f"engine sent non-JSON for {path}") from None
        if not isinstance(data, dict):
            raise EngineProtocolError(f"engine sent a non-object for {path}")
        return data

    async def list_models(self) -> list[str]:
        """Model ids the engine serves (`GET /models`)."""
        response = await self._guard(self._http.get("/models"))
        if response.status_code >= 400:
            raise EngineError(f"engine refused /models: HTTP {response.status_code}")
        try:
            return [str(entry["id"]) for entry in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise EngineProtocolError("engine's /models is not an OpenAI model list") from None

    async def parallel_slots(self) -> int | None:
        """How many requests the engine runs at once, if it says: llama.cpp's `llama-server`
        answers `GET /props` (beside `/v1`) with `total_slots`. None when nothing says (an
        engine without the route, or one that is not up yet)."""
        root = self.base_url.removesuffix("/v1")
        try:
            response = await self._http.get(f"{root}/props")
            props = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        slots = props.get("total_slots") if isinstance(props, dict) else None
        valid = isinstance(slots, int) and not isinstance(slots, bool) and slots > 0
        return slots if valid else None

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """Non-streaming `POST /chat/completions`; the parsed response (with `usage`)."""
        body = {k: v for k, v in body.items() if k != "stream_options"}
        return await self._post("/chat/completions", {**body, "stream": False})

    async def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        """Non-streaming `POST /completions`."""
        body = {k: v for k, v in body.items() if k != "stream_options"}
        return await self._post("/completions", {**body, "stream": False})

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /embeddings` (never streamed in OpenAI's API); the parsed response."""
        return await self._post("/embeddings", body)

    def open_chat_stream(self, body: dict[str, Any]) -> EngineStream:
        """`async with client.open_chat_stream(body) as s: async for chunk in s: ...`"""
        return EngineStream(self, "/chat/completions", body)

    def open_completion_stream(self, body: dict[str, Any]) -> EngineStream:
        return EngineStream(self, "/completions", body)

    async def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Parsed chunks of a streamed chat completion; the last one carries `usage`.

        Call `aclose()` on the iterator (or cancel the task) to stop early: that closes the
        connection. Prefer `open_chat_stream` when the usage and timings are needed too.
        """
        async with self.open_chat_stream(body) as stream:
            async for chunk in stream:
                yield chunk

    async def stream_completions(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async with self.open_completion_stream(body) as stream:
            async for chunk in stream:
                yield chunk
