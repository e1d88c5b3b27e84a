"""Server-sent events in OpenAI's streaming format, and the non-streaming equivalent.

Stream: `data: <chunk>\n\n` per chunk, an optional usage chunk (empty `choices`) when the
client asked `stream_options.include_usage`, then `data: [DONE]`. A failure after the stream
started becomes `data: {"error": {...}}` and the stream ends without `[DONE]`, which the
`openai` SDK raises as `APIError` (COCOON just truncated the body).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cocoon.gateway.api.backend import ChatChunk, Endpoint, Usage
from cocoon.gateway.api.errors import ApiError

SSE_DONE = b"data: [DONE]\n\n"


def sse_data(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def sse_error(error: ApiError) -> bytes:
    return sse_data(error.body())


@dataclass
class ResponseFormatter:
    """Turns backend items into OpenAI objects for one response (one id, one model)."""

    endpoint: Endpoint
    response_id: str
    created: int
    model: str
    include_usage: bool = False
    _started: set[int] = field(default_factory=set)

    @property
    def _object(self) -> str:
        return "chat.completion.chunk" if self.endpoint == "chat.completions" else "text_completion"

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.response_id,
            "object": self._object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            obj["usage"] = None  # OpenAI sends null on every chunk but the usage one
        return obj

    def chunk(self, item: ChatChunk) -> dict[str, Any]:
        if self.endpoint == "chat.completions":
            delta: dict[str, Any] = {}
            if item.index not in self._started:
                delta["role"] = item.role or "assistant"  # the first delta names the role
            elif item.role:
                delta["role"] = item.role
            delta["content"] = item.text
            choice: dict[str, Any] = {"index": item.index, "delta": delta}
        else:
            choice = {"index": item.index, "text": item.text}
        self._started.add(item.index)
        choice.update(logprobs=None, finish_reason=item.finish_reason)
        return self._envelope([choice])

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        obj = self._envelope([])
        obj["usage"] = usage.as_openai()
        return obj

    def stream_event(self, item: ChatChunk | Usage) -> bytes | None:
        """SSE bytes for one backend item; None for a usage the client did not ask for."""
        if isinstance(item, Usage):
            return sse_data(self.usage_chunk(item)) if self.include_usage else None
        return sse_data(self.chunk(item))

    def complete(self, items: list[ChatChunk | Usage]) -> dict[str, Any]:
        """The non-streaming response: texts joined per choice, usage from the backend."""
        texts: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        usage: Usage | None = None
        for item in items:
            if isinstance(item, Usage):
                usage = item
                continue
            texts.setdefault(item.index, []).append(item.text)
            if item.finish_reason is not None:
                finish[item.index] = item.finish_reason
        choices = []
        for index in sorted(texts):
            text = "".join(texts[index])
            choice: dict[str, Any] = {"index": index}
            if self.endpoint == "chat.completions":
                choice["message"] = {"role": "assistant", "content": text, "refusal": None}
            else:
                choice["text"] = text
            choice.update(logprobs=None, finish_reason=finish.get(index, "stop"))
            choices.append(choice)
        return {
            "id": self.response_id,
            "object": "chat.completion"
            if self.endpoint == "chat.completions"
            else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage.as_openai() if usage is not None else None,
        }
