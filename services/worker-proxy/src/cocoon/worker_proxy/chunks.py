"""What the worker does to an opened request body and to the engine's stream chunks (no I/O).

* `engine_request` enforces what was paid for: the WorkItem's `max_tokens` (the billing hold was
  computed from it), the WorkItem's model, and a streamed answer with usage. It also drops
  explicit nulls: OpenAI's specification lets any optional parameter be `null` (meaning its
  default), engines do not all accept them, and a client-sealed body reaches the worker as the
  client wrote it.
* `UsageMeter` turns the engine's chunks into the token counts the receipt signs: the engine's
  own `usage` when it reports one, else the content pieces it streamed (one per token in
  OpenAI-compatible servers), so a cancelled stream still has a count for what was produced.
* Usage is taken out of the forwarded chunks and sent once, in the final sealed chunk, so the
  gateway sees exactly one usage and it is the one the receipt signs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Endpoint = Literal["chat.completions", "completions", "embeddings"]
# Embeddings go back in sealed chunks of about this many bytes (a Kafka record's limit is 1 MiB;
# 2048 inputs of 384 floats are several MiB as JSON).
EMBEDDINGS_CHUNK_BYTES = 256 * 1024


class BadRequestBody(ValueError):
    """The opened body is not an OpenAI request this worker can run (message: no content)."""


@dataclass(frozen=True)
class EngineRequest:
    endpoint: Endpoint
    body: dict[str, Any]


def engine_request(plaintext: bytes, *, model: str, max_tokens: int) -> EngineRequest:
    """Parse the opened body and force the worker's terms onto it."""
    try:
        body = json.loads(plaintext)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequestBody("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequestBody("the request body is not a JSON object")
    if "messages" in body:
        endpoint: Endpoint = "chat.completions"
    elif "prompt" in body:
        endpoint = "completions"
    elif "input" in body:
        endpoint = "embeddings"
    else:
        raise BadRequestBody("the request body has neither messages, prompt nor input")
    # null means the default: leave the parameter out, so the engine applies its own.
    body = {key: value for key, value in body.items() if value is not None}
    if endpoint == "embeddings":
        # Not generated, so nothing to cap or stream: the engine's usage counts the input.
        for key in ("stream", "stream_options", "max_tokens", "user"):
            body.pop(key, None)
        body["model"] = model
        return EngineRequest(endpoint, body)
    # Never more than the hold covers; `max_completion_tokens` is the newer alias of the cap.
    body.pop("max_completion_tokens", None)
    asked = body.get("max_tokens")
    if not isinstance(asked, int) or isinstance(asked, bool) or not 0 < asked <= max_tokens:
        body["max_tokens"] = max_tokens
    body["model"] = model
    body["stream"] = True
    options = body.get("stream_options")
    body["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
        # vLLM's and SGLang's extension (engines without it ignore it): usage on every chunk, so
        # a cancelled stream's receipt still carries its prompt tokens.
        "continuous_usage_stats": True,
    }
    body.pop("n", None)  # one choice: the receipt and the gateway count a single stream
    return EngineRequest(endpoint, body)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass
class UsageMeter:
    """Token counts of one engine stream."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    # The engine's closing usage chunk (no choices) came: its counts are the whole answer's.
    # Usage on every chunk (continuous stats) gives the prompt count before that, but the
    # completion count of a stream cut short stays the pieces the client received.
    reported: bool = False
    pieces: int = 0  # content pieces seen (the count when the engine reports nothing)
    last_id: str | None = None
    last_model: str | None = None
    created: int | None = None

    def observe(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """Record `chunk`; return what to forward (usage removed), or None if nothing is left."""
        if isinstance(chunk.get("id"), str):
            self.last_id = chunk["id"]
        if isinstance(chunk.get("model"), str):
            self.last_model = chunk["model"]
        if isinstance(chunk.get("created"), int):
            self.created = chunk["created"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if text:
                self.pieces += 1
        usage = chunk.get("usage")
        if not isinstance(usage, dict):
            return None if _says_nothing(chunk) else chunk
        if not chunk.get("choices"):
            self.reported = True
        self.prompt_tokens = _int(usage.get("prompt_tokens"))
        self.completion_tokens = _int(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        self.cached_prompt_tokens = min(
            self.prompt_tokens,
            _int(details.get("cached_tokens")) if isinstance(details, dict) else 0,
        )
        details = usage.get("completion_tokens_details")
        self.reasoning_tokens = min(
            self.completion_tokens,
            _int(details.get("reasoning_tokens")) if isinstance(details, dict) else 0,
        )
        rest = {k: v for k, v in chunk.items() if k != "usage"}
        return rest if rest.get("choices") and not _says_nothing(rest) else None

    @property
    def completion(self) -> int:
        """Completion tokens: the engine's count if it gave one, else the pieces streamed."""
        return self.completion_tokens if self.reported else self.pieces

    def usage(self) -> dict[str, Any]:
        """The OpenAI usage object matching the receipt."""
        completion = self.completion
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_prompt_tokens},
            "completion_tokens_details": {
                "reasoning_tokens": min(self.reasoning_tokens, completion)
            },
        }

    def usage_chunk(self, endpoint: Endpoint) -> dict[str, Any]:
        """The closing chunk of a successful stream, shaped as OpenAI's include_usage chunk
        (for embeddings: an embeddings list with no data and the input's usage)."""
        chunk: dict[str, Any]
        if endpoint == "embeddings":
            tokens = self.prompt_tokens
            usage = {"prompt_tokens": tokens, "total_tokens": tokens}
            chunk = {"object": "list", "data": [], "usage": usage}
        else:
            obj = "chat.completion.chunk" if endpoint == "chat.completions" else "text_completion"
            chunk = {"object": obj, "choices": [], "usage": self.usage()}
        if self.last_id is not None:
            chunk["id"] = self.last_id
        if self.last_model is not None:
            chunk["model"] = self.last_model
        if self.created is not None:
            chunk["created"] = self.created
        return chunk


def embedding_pieces(
    response: dict[str, Any], max_bytes: int = EMBEDDINGS_CHUNK_BYTES
) -> list[dict[str, Any]]:
    """The engine's embeddings response as chunks of its `data`, each about `max_bytes` at most
    (one embedding per chunk at least); the usage goes in the final chunk, as for chat."""
    data = response.get("data")
    if not isinstance(data, list):
        raise ValueError("the engine's embeddings response has no data list")
    pieces: list[dict[str, Any]] = []
    batch: list[Any] = []
    size = 0
    for item in data:
        item_size = len(encode(item))
        if batch and size + item_size > max_bytes:
            pieces.append({"object": "list", "data": batch})
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        pieces.append({"object": "list", "data": batch})
    return pieces


def _says_nothing(chunk: dict[str, Any]) -> bool:
    """A chunk with no text, no finish and nothing but a role: engines open a stream with one.

    Not forwarded: the gateway names the role on the first content anyway, and a chunk of its
    own would go to the bus just ahead of the first token, which then waits for its ack (one
    produce request at a time per broker), ~3-5 ms on the time to first token.
    """
    choices = chunk.get("choices")
    if not choices:
        return False
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("finish_reason") or choice.get("text"):
            return False
        delta = choice.get("delta")
        if not isinstance(delta, dict) or delta.get("content") or set(delta) - {"role", "content"}:
            return False
    return True


# OpenAI's error type for a request that cannot be served as sent: the gateway answers 400.
INVALID_REQUEST = "invalid_request_error"


def error_chunk(
    code: str, message: str, error_type: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The closing chunk of a failed stream (sealed: only its opener, the gateway or the client
    that sealed the request, reads it).

    `error_type` is OpenAI's error type when the request itself is at fault
    (`INVALID_REQUEST`); then `message` is the engine's explanation, for the client. Otherwise
    it says what happened, never content.
    """
    error: dict[str, Any] = {"code": code, "message": message}
    if error_type is not None:
        error["type"] = error_type
    if param is not None:
        error["param"] = param  # the request parameter the engine refused
    return {"error": error}


def encode(chunk: dict[str, Any]) -> bytes:
    return json.dumps(chunk, separators=(",", ":"), ensure_ascii=False).encode()
