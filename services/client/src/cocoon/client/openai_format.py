"""The engine's chunks, opened by the client, as OpenAI's responses (stream or not).

The same shapes as the gateway's own path (docs/api.md, "Streaming"): chunks with
`chat.completion.chunk` / `text_completion`, `usage: null` on each when the caller asked for
`stream_options.include_usage` and a last usage chunk with empty choices; each choice's
`finish_reason` exactly once, on its last chunk (an engine's repeat dropped, a missing one sent
as `stop`); tool calls as `delta.tool_calls` keyed by `index`, with the call's id, type and name
in its first delta only, joined into `message.tool_calls` when not streamed; `logprobs` as the
engine sent them, joined per choice when not streamed; errors as
`{"error": {message, type, param, code}}`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any


def error_body(message: str, *, type_: str, code: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def embeddings_response(chunks: list[dict[str, Any]], model: str) -> dict[str, Any]:
    """The worker's runs of embedding objects and its usage as OpenAI's one response object;
    ValueError if the runs leave a gap (the caller answers 502, as the gateway would)."""
    data = sorted(
        (d for c in chunks for d in c.get("data") or () if isinstance(d, dict)),
        key=lambda d: d.get("index", -1),
    )
    if not data or [d.get("index") for d in data] != list(range(len(data))):
        raise ValueError("the worker's embeddings are incomplete")
    usage = next((c["usage"] for c in chunks if isinstance(c.get("usage"), dict)), None)
    if usage is None:
        raise ValueError("the worker ended the embeddings without their usage")
    tokens = usage.get("prompt_tokens", 0)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


class Formatter:
    def __init__(self, endpoint: str, model: str, include_usage: bool) -> None:
        self.endpoint = endpoint
        self.model = model
        self.include_usage = include_usage
        prefix = "chatcmpl-" if endpoint == "chat.completions" else "cmpl-"
        self.id = prefix + uuid.uuid4().hex
        self.created = int(time.time())
        self._texts: dict[int, list[str]] = {}
        self._calls: dict[int, dict[int, dict[str, Any]]] = {}  # choice -> call index -> call
        self._finish: dict[int, str] = {}
        self._logprobs: dict[int, dict[str, Any]] = {}
        self._started: set[int] = set()
        self.usage: dict[str, Any] | None = None

    @property
    def _chat(self) -> bool:
        return self.endpoint == "chat.completions"

    @property
    def _object(self) -> str:
        return "chat.completion.chunk" if self._chat else "text_completion"

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": self._object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            obj["usage"] = None
        return obj

    def take(self, engine_chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """Stream objects for one engine chunk (and remember it for the whole response)."""
        out = []
        for choice in engine_chunk.get("choices") or []:
            index = choice.get("index", 0)
            index = index if isinstance(index, int) else 0
            if self._chat:
                delta = choice.get("delta") or {}
                text = _text(delta.get("content"))
                calls = [c for c in delta.get("tool_calls") or () if isinstance(c, dict)]
            else:
                text, calls = _text(choice.get("text")), []
            finish = choice.get("finish_reason") if index not in self._finish else None
            logprobs = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None
            if not (text or calls or finish or logprobs) and index in self._started:
                continue  # an empty piece, or the engine's repeat after the choice ended
            out.append(self._envelope([self._shaped(index, text, calls, finish, logprobs)]))
        if engine_chunk.get("usage"):
            self.usage = engine_chunk["usage"]
        return out

    def _shaped(
        self,
        index: int,
        text: str,
        calls: list[dict[str, Any]],
        finish: str | None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        shaped: dict[str, Any] = {"index": index}
        if self._chat:
            delta: dict[str, Any] = {} if index in self._started else {"role": "assistant"}
            if text or not calls:
                delta["content"] = text
            if calls:
                delta["tool_calls"] = [self._call_delta(index, c) for c in calls]
            shaped["delta"] = delta
        else:
            shaped["text"] = text
        self._started.add(index)
        self._texts.setdefault(index, []).append(text)
        if finish:
            self._finish[index] = finish
        if logprobs is not None:
            _merge_logprobs(self._logprobs.setdefault(index, {}), logprobs)
        shaped.update(logprobs=logprobs, finish_reason=finish or None)
        return shaped

    def _call_delta(self, choice: int, piece: dict[str, Any]) -> dict[str, Any]:
        """OpenAI's shape: id, type and name in a call's first delta, then arguments only
        (clients concatenate the deltas: a repeated name would be read twice)."""
        function = piece.get("function")
        if not isinstance(function, dict):
            function = {}
        made = self._calls.setdefault(choice, {})
        index = piece.get("index")
        index = index if isinstance(index, int) else len(made)
        arguments = _text(function.get("arguments"))
        if index in made:
            made[index]["function"]["arguments"] += arguments
            return {"index": index, "function": {"arguments": arguments}}
        call_id = _text(piece.get("id")) or f"call_{self.id}_{index}"
        name = _text(function.get("name"))
        made[index] = {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        return {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }

    def closing_chunks(self) -> list[dict[str, Any]]:
        """A `finish_reason: "stop"` chunk for each started choice the engine ended without
        one, so that every streamed choice finishes exactly once; then the usage chunk."""
        out = [
            self._envelope([self._shaped(index, "", [], "stop")])
            for index in sorted(self._started - self._finish.keys())
        ]
        if self.include_usage and self.usage is not None:
            usage = self._envelope([])
            usage["usage"] = self.usage
            out.append(usage)
        return out

    def complete(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._texts) or [0]:
            text = "".join(self._texts.get(index, []))
            choice: dict[str, Any] = {"index": index}
            if self._chat:
                message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
                if made := self._calls.get(index):
                    message["content"] = text or None
                    message["tool_calls"] = [made[i] for i in sorted(made)]
                choice["message"] = message
            else:
                choice["text"] = text
            choice.update(
                logprobs=self._logprobs.get(index), finish_reason=self._finish.get(index, "stop")
            )
            choices.append(choice)
        return {
            "id": self.id,
            "object": "chat.completion" if self._chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage,
        }


def _merge_logprobs(whole: dict[str, Any], piece: dict[str, Any]) -> None:
    """Join a streamed piece's logprobs into the whole answer's: each list is the next tokens'
    (chat: `content`; completions: `tokens`, `token_logprobs`, ...)."""
    for key, value in piece.items():
        if isinstance(value, list):
            whole.setdefault(key, []).extend(value)
        else:
            whole.setdefault(key, value)
