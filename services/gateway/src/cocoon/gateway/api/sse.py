"""Server-sent events in OpenAI's streaming format, and the non-streaming equivalent.

Stream: `data: <chunk>\n\n` per chunk, an optional usage chunk (empty `choices`) when the
client asked `stream_options.include_usage`, then `data: [DONE]`. Each choice carries a
`finish_reason` exactly once, in its last chunk (a repeat from the engine is dropped, a missing
one is sent as `stop` before the usage chunk). A failure after the stream started becomes
`data: {"error": {...}}` followed by `data: [DONE]`, which the `openai` SDK raises as
`APIError` (COCOON just truncated the body). A choice's `logprobs` are the engine's, as it
streamed them; joined per choice in a non-streamed answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cocoon.gateway.api.backend import ChatChunk, Embeddings, Endpoint, ToolCallDelta, Usage
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
    _calls_started: set[tuple[int, int]] = field(default_factory=set)  # (choice, call index)
    _finished: set[int] = field(default_factory=set)

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
            if item.text or not item.tool_calls:
                delta["content"] = item.text
            if item.tool_calls:
                delta["tool_calls"] = [self._call_delta(item.index, c) for c in item.tool_calls]
            choice: dict[str, Any] = {"index": item.index, "delta": delta}
        else:
            choice = {"index": item.index, "text": item.text}
        self._started.add(item.index)
        # Clients stop reading a choice at its finish_reason: it must come once, and last.
        finish = None if item.index in self._finished else item.finish_reason
        if finish is not None:
            self._finished.add(item.index)
        choice.update(logprobs=item.logprobs, finish_reason=finish)
        return self._envelope([choice])

    def closing_chunks(self) -> list[ChatChunk]:
        """A closing chunk (`finish_reason: "stop"`) for each started choice the backend
        ended without one, so that every streamed choice finishes exactly once."""
        return [
            ChatChunk(text="", index=index, finish_reason="stop")
            for index in sorted(self._started - self._finished)
        ]

    def missing_finishes(self) -> bytes:
        return b"".join(sse_data(self.chunk(item)) for item in self.closing_chunks())

    def says_nothing(self, item: ChatChunk) -> bool:
        """An engine's repeated finish: nothing to say after the choice ended."""
        return item.index in self._finished and not (item.text or item.tool_calls or item.logprobs)

    def _call_delta(self, choice: int, call: ToolCallDelta) -> dict[str, Any]:
        """OpenAI's shape: id, type and name in a call's first delta, then arguments only
        (engines that repeat the name on every delta would otherwise make clients that
        concatenate deltas, as the SDKs do, see it twice)."""
        key = (choice, call.index)
        function: dict[str, Any] = {"arguments": call.arguments}
        out: dict[str, Any] = {"index": call.index}
        if key not in self._calls_started:
            self._calls_started.add(key)
            out.update(id=call.id or f"call_{self.response_id}_{call.index}", type="function")
            function = {"name": call.name or "", "arguments": call.arguments}
        out["function"] = function
        return out

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        obj = self._envelope([])
        obj["usage"] = usage.as_openai()
        return obj

    def stream_event(self, item: ChatChunk | Embeddings | Usage) -> bytes:
        """SSE bytes for one backend item (empty for a usage the client did not ask for)."""
        if isinstance(item, Embeddings):
            return b""  # never part of a chat or completion stream
        if isinstance(item, Usage):  # the last item: every choice has finished by now
            closing = self.missing_finishes()
            return (closing + sse_data(self.usage_chunk(item))) if self.include_usage else closing
        return b"" if self.says_nothing(item) else sse_data(self.chunk(item))

    def complete(self, items: list[ChatChunk | Embeddings | Usage]) -> dict[str, Any]:
        """The non-streaming response: texts joined per choice, usage from the backend."""
        texts: dict[int, list[str]] = {}
        calls: dict[int, dict[int, dict[str, Any]]] = {}  # choice -> call index -> call
        finish: dict[int, str | None] = {}
        logprobs: dict[int, dict[str, Any]] = {}
        usage: Usage | None = None
        for item in items:
            if isinstance(item, Usage):
                usage = item
                continue
            if isinstance(item, Embeddings):
                continue  # never part of a chat or completion answer
            texts.setdefault(item.index, []).append(item.text)
            if item.logprobs is not None:
                _merge_logprobs(logprobs.setdefault(item.index, {}), item.logprobs)
            for piece in item.tool_calls:
                _merge_call(calls.setdefault(item.index, {}), piece)
            if item.finish_reason is not None:
                finish[item.index] = item.finish_reason
        choices = []
        for index in sorted(texts):
            text = "".join(texts[index])
            choice: dict[str, Any] = {"index": index}
            if self.endpoint == "chat.completions":
                message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
                if made := calls.get(index):
                    for i, call in made.items():
                        call["id"] = call["id"] or f"call_{self.response_id}_{i}"
                    message["content"] = text or None
                    message["tool_calls"] = [made[i] for i in sorted(made)]
                choice["message"] = message
            else:
                choice["text"] = text
            choice.update(logprobs=logprobs.get(index), finish_reason=finish.get(index, "stop"))
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


def _merge_logprobs(whole: dict[str, Any], piece: dict[str, Any]) -> None:
    """Join a streamed piece's logprobs into the whole answer's: each list is the next tokens'
    (chat: `content`, `refusal`; completions: `tokens`, `token_logprobs`, ...)."""
    for key, value in piece.items():
        if isinstance(value, list):
            whole.setdefault(key, []).extend(value)
        else:
            whole.setdefault(key, value)


def _merge_call(calls: dict[int, dict[str, Any]], piece: ToolCallDelta) -> None:
    call = calls.setdefault(
        piece.index,
        {"id": piece.id, "type": "function", "function": {"name": piece.name, "arguments": ""}},
    )
    call["id"] = call["id"] or piece.id
    call["function"]["name"] = call["function"]["name"] or piece.name
    call["function"]["arguments"] += piece.arguments
