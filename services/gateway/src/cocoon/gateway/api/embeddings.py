"""The answer to `POST /v1/embeddings`, joined from the worker's chunks.

The worker seals the engine's embedding objects back in several chunks (a large request does
not fit one Kafka record) and the usage last; the client gets OpenAI's one JSON object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cocoon.gateway.api.backend import ChatChunk, Embeddings, Usage
from cocoon.gateway.api.errors import WorkerLost


def embeddings_response(items: Sequence[ChatChunk | Embeddings | Usage], model: str) -> dict:
    data: list[dict[str, Any]] = [d for i in items if isinstance(i, Embeddings) for d in i.data]
    usage = next((i for i in items if isinstance(i, Usage)), None)
    if usage is None:
        raise WorkerLost("The worker ended the embeddings without their usage.")
    data.sort(key=lambda d: d.get("index", -1))
    if [d.get("index") for d in data] != list(range(len(data))) or not data:
        raise WorkerLost("The worker's embeddings are incomplete.")
    tokens = usage.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
