"""llama-cpp-python's OpenAI server, made to honour `stream_options.include_usage` (and
`continuous_usage_stats`).

Run as `python -m cocoon.network.engine_server <llama_cpp.server arguments>`.

Why: llama-cpp-python 0.3.36 drops `stream_options` and never sends `usage` in a stream, while
vLLM, SGLang and llama.cpp's own `llama-server` all send a last chunk with `choices: []` and
`usage` when asked. Billing charges from that usage, and the worker-proxy must stay
engine-agnostic, so the local engine is brought up to the OpenAI contract here, in the engine
process, instead of teaching the worker-proxy about llama.cpp. Counts come from llama-cpp-python's
own token lists (the same ones its non-streaming `usage` reports), read from its generator frames;
`prompt_tokens_details.cached_tokens` is the prompt prefix reused from the KV cache. (Non-streaming
answers keep llama-cpp-python's own `usage`, without `prompt_tokens_details`: its response model
drops extra fields, and OpenAI clients read a missing detail as 0.)

The same adapter brings the rest of the request surface up to OpenAI's contract
(`engine_compat` says what it rewrites), streams `echo`ed prompts (llama-cpp-python echoes only
in non-streamed answers), puts chat `logprobs` in OpenAI's shape
(`engine_compat.chat_logprobs`), and answers a request the engine cannot serve with a 400 in
OpenAI's shape (llama-cpp-python says 500 for its own validation errors, which would read as an
engine failure).
"""

from __future__ import annotations

import contextvars
import json
import threading
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from typing import Any

import llama_cpp
from fastapi.exceptions import RequestValidationError
from jinja2 import TemplateError
from llama_cpp.server import errors as server_errors

from cocoon.network.engine_compat import UnsupportedRequest, adapt_chat, chat_logprobs

_Scope = dict[str, Any]
_Receive = Callable[[], Awaitable[dict[str, Any]]]
_Send = Callable[[dict[str, Any]], Awaitable[None]]
_App = Callable[[_Scope, _Receive, _Send], Awaitable[None]]

# Set per HTTP request by the middleware; read where the engine call starts (contextvars follow
# the request into starlette's thread pool).
_want_usage: contextvars.ContextVar[bool] = contextvars.ContextVar("want_usage", default=False)
# `stream_options.continuous_usage_stats` (vLLM's and SGLang's extension): usage on every chunk,
# so a stream cut short (a cancel) still knows its prompt and completion counts.
_want_continuous: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "want_continuous", default=False
)
# `echo` on a streamed completion: the prompt to put before the first piece of text.
_echo_prompt: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "echo_prompt", default=None
)
# `top_logprobs` of a chat request that asked for logprobs: its answer's are trimmed to it.
_top_logprobs: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "top_logprobs", default=None
)
_CHAT_PATH = "/v1/chat/completions"
_COMPLETIONS_PATH = "/v1/completions"
_USAGE_PATHS = {_CHAT_PATH, _COMPLETIONS_PATH}
_outer = threading.local()


def _frame_locals(gen: Any) -> dict[str, Any]:
    frame = getattr(gen, "gi_frame", None)
    return dict(frame.f_locals) if frame is not None else {}


def _relay(inner: Generator[Any, Any, Any], on_item: Callable[[Any], None] | None = None) -> Any:
    """Yield from `inner`, forwarding send() and close(), calling `on_item` after each item."""
    try:
        value = next(inner)
        while True:
            if on_item is not None:
                on_item(value)
            sent = yield value
            value = inner.send(sent) if sent is not None else next(inner)
    except StopIteration as stop:
        return stop.value
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            close()


def _patch_llama() -> None:
    cls: Any = llama_cpp.Llama  # patched in place, so typed loosely
    if getattr(cls, "_cocoon_usage_patched", False):
        return
    orig_generate = cls.generate
    orig_create = cls._create_completion
    orig_chat = cls.create_chat_completion
    orig_completion = cls.create_completion

    def generate(self: Any, tokens: Any, *args: Any, **kwargs: Any) -> Any:
        tokens = list(tokens)
        inner = orig_generate(self, tokens, *args, **kwargs)
        first = True

        def on_token(_token: int) -> None:
            nonlocal first
            if first:
                first = False
                # At its first yield, generate's `tokens` is what it had to evaluate; the rest
                # of the prompt was reused from the KV cache.
                evaluated = _frame_locals(inner).get("tokens")
                if isinstance(evaluated, list):
                    self._cocoon_cached = max(0, len(tokens) - len(evaluated))

        return (yield from _relay(inner, on_token))

    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        self._cocoon_cached = 0
        self._cocoon_usage = None
        result = orig_create(self, *args, **kwargs)
        if isinstance(result, dict) or not hasattr(result, "gi_frame"):
            return result
        inner = result

        def on_chunk(_chunk: Any) -> None:
            scope = _frame_locals(inner)
            prompt, completion = scope.get("prompt_tokens"), scope.get("completion_tokens")
            if isinstance(prompt, list) and isinstance(completion, list):
                self._cocoon_usage = (len(prompt), len(completion))

        return _relay(inner, on_chunk)

    def usage_of(self: Any) -> dict[str, Any] | None:
        if self._cocoon_usage is None:
            return None
        prompt, completion = self._cocoon_usage
        cached = min(getattr(self, "_cocoon_cached", 0), prompt)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def with_usage(orig: Callable[..., Any], obj: str) -> Callable[..., Any]:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            # The chat handler calls create_completion from inside the chat stream: only the
            # outermost call may add the usage chunk.
            if getattr(_outer, "active", False):
                return orig(self, *args, **kwargs)
            want, continuous = _want_usage.get(), _want_continuous.get()
            echo = _echo_prompt.get() if obj == "text_completion" else None
            top = _top_logprobs.get() if obj == "chat.completion.chunk" else None
            _outer.active = True  # the chat handler makes its inner call right here ...
            try:
                result = orig(self, *args, **kwargs)
            finally:
                _outer.active = False
            if isinstance(result, dict):
                # Non-streaming answers already carry usage.
                return result if top is None else _with_chat_logprobs(result, top)
            chunks = _stream_with_usage(self, iter(result), want, continuous, obj, echo)
            return chunks if top is None else _stream_with_chat_logprobs(chunks, top)

        return call

    def _stream_with_usage(
        self: Any, inner: Iterator[Any], want: bool, continuous: bool, obj: str, echo: str | None
    ) -> Any:
        last: dict[str, Any] = {}
        try:
            while True:
                _outer.active = True  # ... or lazily here; each next() runs wholly in one thread
                try:
                    chunk = next(inner)
                except StopIteration:
                    break
                finally:
                    _outer.active = False
                last.update({k: chunk.get(k) for k in ("id", "created", "model")})
                if echo is not None and chunk.get("choices"):
                    chunk = _prefix_text(chunk, echo)
                    echo = None
                usage = usage_of(self) if continuous else None
                yield chunk if usage is None else {**chunk, "usage": usage}
        finally:
            close = getattr(inner, "close", None)
            if close is not None:
                close()
        usage = usage_of(self)
        if want and usage is not None:
            yield {**last, "object": obj, "choices": [], "usage": usage}

    cls.generate = generate
    cls._create_completion = create
    cls.create_chat_completion = with_usage(orig_chat, "chat.completion.chunk")
    cls.create_completion = with_usage(orig_completion, "text_completion")
    cls._cocoon_usage_patched = True


def _stream_with_chat_logprobs(chunks: Generator[Any, Any, Any], top: int) -> Any:
    try:
        for chunk in chunks:
            yield _with_chat_logprobs(chunk, top)
    finally:
        chunks.close()  # closing the stream (a client gone) stops the generation at once


def _with_chat_logprobs(answer: dict[str, Any], top: int) -> dict[str, Any]:
    choices = [
        {**c, "logprobs": chat_logprobs(c.get("logprobs"), top)} if isinstance(c, dict) else c
        for c in answer.get("choices") or ()
    ]
    return {**answer, "choices": choices}


def _prefix_text(chunk: dict[str, Any], prefix: str) -> dict[str, Any]:
    first, *rest = chunk["choices"]
    return {**chunk, "choices": [{**first, "text": prefix + (first.get("text") or "")}, *rest]}


def _bad_request(message: str, param: str | None) -> tuple[int, server_errors.ErrorResponse]:
    return 400, server_errors.ErrorResponse(
        message=message, type="invalid_request_error", param=param, code="invalid_request"
    )


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """The first problem, without the offending input (it may quote the prompt)."""
    first = error.errors()[0] if error.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    return f"Invalid value for '{param}': {first.get('msg', 'invalid')}.", param


def _patch_errors() -> None:
    """Requests the engine cannot serve are 400s, not llama-cpp-python's 500."""
    cls: Any = server_errors.RouteErrorHandler  # patched in place, so typed loosely
    if getattr(cls, "_cocoon_errors_patched", False):
        return
    orig = cls.error_message_wrapper

    def error_message_wrapper(self: Any, error: Exception, body: Any = None) -> Any:
        if isinstance(error, RequestValidationError):
            return _bad_request(*_validation_message(error))
        if isinstance(error, TemplateError):
            # The model's chat template refused the conversation (e.g. roles out of order).
            return _bad_request(f"The model's chat template refused the messages: {error}", None)
        return orig(self, error, body)

    cls.error_message_wrapper = error_message_wrapper
    cls._cocoon_errors_patched = True


def _adapt(path: str, request: Any) -> Any:
    """The body rewritten for this engine (chat only; completions pass as they are)."""
    if path == _CHAT_PATH and isinstance(request, dict):
        return adapt_chat(request)
    return request


class IncludeUsageMiddleware:
    """Reads the request body once: adapts it (engine_compat), notes whether a stream asked
    for usage or an echo, then replays the adapted body to the server."""

    def __init__(self, app: _App) -> None:
        self.app = app

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in _USAGE_PATHS
        ):
            await self.app(scope, receive, send)
            return
        parts: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away before sending its body
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        echo: str | None = None
        top_logprobs: int | None = None
        try:
            request = json.loads(body)
            options = request.get("stream_options") or {}
            want = bool(request.get("stream")) and bool(options.get("include_usage"))
            continuous = want and bool(options.get("continuous_usage_stats"))
            if request.get("stream") and request.get("echo") is True:
                prompt = request.get("prompt")
                echo = prompt if isinstance(prompt, str) else None
        except (ValueError, AttributeError):
            want = continuous = False  # let the server produce its own validation error
        else:
            try:
                adapted = _adapt(scope["path"], request)
            except UnsupportedRequest as exc:
                await _send_json(send, *_bad_request(str(exc), exc.param))
                return
            body = json.dumps(adapted).encode()
            if scope["path"] == _CHAT_PATH and adapted.get("logprobs") is True:
                top = adapted.get("top_logprobs")
                top_logprobs = top if isinstance(top, int) else 0
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: disconnect detection

        usage_token, continuous_token = _want_usage.set(want), _want_continuous.set(continuous)
        echo_token = _echo_prompt.set(echo)
        top_token = _top_logprobs.set(top_logprobs)
        try:
            await self.app(scope, replay, send)
        finally:
            _top_logprobs.reset(top_token)
            _want_usage.reset(usage_token)
            _want_continuous.reset(continuous_token)
            _echo_prompt.reset(echo_token)


async def _send_json(send: _Send, status: int, error: Mapping[str, Any]) -> None:
    payload = json.dumps({"error": error}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def main() -> None:
    import llama_cpp.server.__main__ as server_main

    _patch_llama()
    _patch_errors()
    create_app = server_main.create_app
    server_main.create_app = lambda **kwargs: IncludeUsageMiddleware(create_app(**kwargs))
    server_main.main()


if __name__ == "__main__":
    main()
