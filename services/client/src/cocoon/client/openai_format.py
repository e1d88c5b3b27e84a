"""The engine's chunks, opened by the client, as OpenAI's responses (stream or not).

The same shapes as the gateway's own path (docs/api.md, "Streaming"): chunks with
`chat.completion.chunk` / `text_completion`, `usage: null` on each when the caller asked for
`stream_options.include_usage` and a last usage chunk with empty choices; errors as
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


class Formatter:
    def __init__(self, endpoint: str, model: str, include_usage: bool) -> None:
        self.endpoint = endpoint
        self.model = model
        self.include_usage = include_usage
        prefix = "chatcmpl-" if endpoint == "chat.completions" else "cmpl-"
        self.id = prefix + uuid.uuid4().hex
        self.created = int(time.time())
        self._texts: dict[int, list[str]] = {}
        self._finish: dict[int, str | None] = {}
        self._started: set[int] = set()
        self.usage: dict[str, Any] | None = None

    @property
    def _object(self) -> str:
        return "chat.completion.chunk" if self.endpoint == "chat.completions" else "text_completion"

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
            index = int(choice.get("index", 0))
            if self.endpoint == "chat.completions":
                delta = choice.get("delta") or {}
                text = delta.get("content") or ""
                new_delta: dict[str, Any] = {}
                if index not in self._started:
                    new_delta["role"] = "assistant"
                new_delta["content"] = text
                shaped: dict[str, Any] = {"index": index, "delta": new_delta}
            else:
                text = choice.get("text") or ""
                shaped = {"index": index, "text": text}
            finish = choice.get("finish_reason")
            if not text and not finish and index in self._started:
                continue
            self._started.add(index)
            self._texts.setdefault(index, []).append(text)
            if finish:
                self._finish[index] = finish
            shaped.update(logprobs=None, finish_reason=finish)
            out.append(self._envelope([shaped]))
        if engine_chunk.get("usage"):
            self.usage = engine_chunk["usage"]
        return out

    def usage_chunk(self) -> dict[str, Any] | None:
        if not self.include_usage or self.usage is None:
            return None
        obj = self._envelope([])
        obj["usage"] = self.usage
        return obj

    def complete(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._texts) or [0]:
            text = "".join(self._texts.get(index, []))
            choice: dict[str, Any] = {"index": index}
            if self.endpoint == "chat.completions":
                choice["message"] = {"role": "assistant", "content": text, "refusal": None}
            else:
                choice["text"] = text
            choice.update(logprobs=None, finish_reason=self._finish.get(index, "stop"))
            choices.append(choice)
        return {
            "id": self.id,
            "object": "chat.completion"
            if self.endpoint == "chat.completions"
            else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage,
        }
