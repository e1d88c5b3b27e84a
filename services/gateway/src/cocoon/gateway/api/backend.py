"""The seam between the HTTP surface and the rest of the network.

The app only ever talks to an `InferenceBackend`. The production implementation sends the
request through Kafka (billing hold, placement, sealing, worker) and yields the opened chunks;
tests use an in-process double. Errors are the typed `ApiError`s of `errors.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

Endpoint = Literal["chat.completions", "completions", "embeddings"]


@dataclass(frozen=True)
class ModelInfo:
    id: str
    attested_workers: int  # placeable workers right now; models with 0 are not listed
    created: int = 0
    owned_by: str = "cocoon"
    min_coefficient: int | None = None  # cheapest worker's price coefficient (1000 = 1.0x)
    # What its workers announced (Heartbeat v4), lower case as listed: "chat", "tools",
    # "embeddings"; and the shortest context length among them, in tokens.
    capabilities: tuple[str, ...] = ()
    context_length: int | None = None
    # nanoTON per token by category at the cheapest worker's coefficient (docs/api.md).
    pricing: dict[str, float] | None = None


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one tool call: its `index` in the message's calls; `id` and `name` come
    with the first piece (engines may repeat them), `arguments` are JSON text to concatenate."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class ChatChunk:
    """One piece of generated text for one choice, for either endpoint.

    For chat it becomes a `delta`, for completions a `text`. `role` is set on a choice's first
    chunk (chat only); `finish_reason` on its last. `tool_calls`: chat only. `logprobs`: the
    engine's for this piece, in OpenAI's shape (chat: `{"content": [...]}`; completions:
    `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`), when the request asked.
    """

    text: str = ""
    index: int = 0
    role: str | None = None
    finish_reason: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    logprobs: dict[str, Any] | None = None


@dataclass(frozen=True)
class Embeddings:
    """A run of embedding objects (`{"object": "embedding", "index", "embedding"}`) of one
    embeddings request, in the engine's format (floats or base64); a response has one or more."""

    data: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Usage:
    """Token counts as reported by the engine; the backend yields it last, exactly once."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


@dataclass(frozen=True)
class InferenceRequest:
    """A validated request, ready for the pipeline.

    `body` is what the worker's engine receives: Cocoon extensions removed, `max_tokens` always
    set (the billing hold is computed from it, so the engine must not exceed it), and always
    streamed with usage, so the gateway can relay chunks and billing gets token counts.
    """

    request_id: str
    endpoint: Endpoint
    model: str
    body: dict[str, Any]
    max_tokens: int
    max_coefficient: int  # highest worker price coefficient accepted, 1000 = 1.0x
    timeout: float  # seconds the whole request may take
    stream: bool  # what the client asked for (the engine always streams)
    prompt_bytes: int
    user: str | None = None


@runtime_checkable
class InferenceBackend(Protocol):
    async def models(self) -> list[ModelInfo]:
        """Models with at least one attested, placeable worker."""
        ...

    def submit(
        self, account_id: str, request: InferenceRequest
    ) -> AsyncIterator[ChatChunk | Embeddings | Usage]:
        """Run one request; usually an `async def` generator (embeddings: `Embeddings` items).

        Raise `InsufficientFunds`, `UnknownModel`, `NoWorkerAvailable` or `UpstreamTimeout`
        before the first item when the request cannot start; raise `WorkerLost` (or any
        `ApiError`) later if it fails mid-way. Yield `Usage` once, last. The app calls
        `aclose()` when the client goes away or the deadline passes: cancel the work then.
        """
        ...
