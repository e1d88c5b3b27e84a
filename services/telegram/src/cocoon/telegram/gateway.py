"""The network as the bot sees it: the gateway's OpenAI-compatible API, per end-user account.

The bot's API key is a delegating key (docs/telegram.md): each call names the Telegram user's
billing account in `X-Cocoon-Account`, so every user is charged for their own tokens. This is the
gateway-sealed path (the gateway reads the prompt); sealed.py is the bot's default, client-sealed
path, and both turn the answer into the same events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from cocoon.core.capabilities import CHAT

ACCOUNT_HEADER = "X-Cocoon-Account"
# A model's capability in /v1/models (the contract's symbol, lower case as the API lists it).
CHAT_CAPABILITY = CHAT.lower()


@dataclass(frozen=True)
class Model:
    id: str
    min_coefficient: int


@dataclass(frozen=True)
class Started:
    request_id: str


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    request_id: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    # On the client-sealed path: the worker's usage receipt (its signature checked against the
    # worker's attested key) and how the bot verified that worker (WorkerCheck.to_dict()).
    receipt: dict[str, Any] | None = None
    worker: dict[str, Any] | None = None


class Answer:
    """Folds OpenAI-style chunk dicts into the bot's events: text deltas, then `Finished`."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.finish_reason: str | None = None

    def events(self, chunk: dict[str, Any]) -> list[Delta | Finished]:
        if "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            raise GatewayError(502, str(error.get("code")), str(error.get("message", "")))
        out: list[Delta | Finished] = []
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text:
                out.append(Delta(text))
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        if usage := chunk.get("usage"):
            out.append(
                Finished(
                    self.request_id,
                    self.finish_reason,
                    int(usage.get("prompt_tokens", 0)),
                    int(usage.get("completion_tokens", 0)),
                )
            )
        return out


class GatewayError(Exception):
    """An OpenAI-style error from the gateway (or the connection to it)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error_of(status: int, body: bytes) -> GatewayError:
    try:
        error = json.loads(body)["error"]
        return GatewayError(status, str(error.get("code") or error.get("type")), error["message"])
    except (ValueError, KeyError, TypeError):
        return GatewayError(status, "http_error", f"HTTP {status}")


def incomplete() -> GatewayError:
    return GatewayError(502, "incomplete_stream", "The answer ended without usage.")


class GatewayClient:
    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 120.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/v1",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout_s, connect=10.0),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def models(self) -> list[Model]:
        response = await self._http.get("/models")
        if response.status_code != 200:
            raise _error_of(response.status_code, response.content)
        # min_coefficient is null while no worker has announced its price yet. Only models
        # that chat: an embedding model cannot answer a message.
        listed = response.json()["data"]
        return [
            Model(m["id"], int(m.get("min_coefficient") or 1000))
            for m in listed
            if CHAT_CAPABILITY in (m.get("capabilities") or [CHAT_CAPABILITY])
        ]

    async def chat(
        self, account_id: str, model: str, messages: list[dict[str, str]], max_tokens: int
    ) -> AsyncIterator[Started | Delta | Finished]:
        """Stream an answer: `Started`, text deltas, then one `Finished`. Closing the iterator early
        disconnects, and the gateway cancels the request on the worker."""
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {ACCOUNT_HEADER: account_id}
        try:
            async with self._http.stream(
                "POST", "/chat/completions", json=body, headers=headers
            ) as response:
                if response.status_code != 200:
                    raise _error_of(response.status_code, await response.aread())
                request_id = response.headers.get("x-request-id", "")
                yield Started(request_id)
                answer = Answer(request_id)
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    for event in answer.events(json.loads(line[6:])):
                        yield event
                        if isinstance(event, Finished):
                            return
                raise incomplete()
        except httpx.HTTPError as exc:
            message = f"The network is unreachable: {exc}"
            raise GatewayError(503, "gateway_unreachable", message) from exc
