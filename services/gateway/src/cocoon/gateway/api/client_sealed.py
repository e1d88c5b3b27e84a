"""The client-sealed interface (docs/sealed-requests.md): clients that verify workers themselves
fetch the evidence here and send requests the gateway cannot open.

    GET  /v1/cocoon/workers?model=M       candidate workers with their evidence (public)
    GET  /v1/cocoon/registry              the signed registry entries (public)
    GET  /v1/cocoon/collateral/{fmspc}    DCAP collateral, as a PCCS serves it (public)
    POST /v1/cocoon/sealed                a sealed request (API key, rate limit, admission);
                                          answers with server-sent events of sealed chunks
    GET  /v1/cocoon/statement?since=MS    the account's charges (API key), for the client's audit

Errors before the first chunk keep their HTTP status and OpenAI's error shape; later ones are a
final `{"type": "error", "error": {...}}` event.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cocoon.gateway.api.backend import InferenceRequest
from cocoon.gateway.api.errors import InvalidRequest
from cocoon.gateway.api.settings import ApiSettings
from cocoon.gateway.api.validation import invalid_from_validation

SEALED_BY_HEADER = "X-Cocoon-Sealed-By"
ENVELOPE_VERSION = 1
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_AEAD_TAG = 16
MAX_RECIPIENTS = 8


@dataclass(frozen=True)
class WrappedKey:
    """The request key, HPKE-wrapped by the client to one candidate worker."""

    enc: bytes
    wrapped_key: bytes


@dataclass(frozen=True)
class ClientSealed:
    """A client-sealed request: metadata in clear, the body only as ciphertext."""

    request: InferenceRequest  # `body` is empty: the gateway never has it
    suite: str
    ciphertext: bytes
    recipients: dict[str, WrappedKey]  # worker id -> its wrapped key


@dataclass(frozen=True)
class RelayedChunk:
    worker_id: str
    attempt: int
    seq: int
    final: bool
    ciphertext: bytes
    error_code: str | None

    def event(self) -> dict[str, Any]:
        return {
            "type": "chunk",
            "worker_id": self.worker_id,
            "attempt": self.attempt,
            "seq": self.seq,
            "final": self.final,
            "ciphertext": base64.b64encode(self.ciphertext).decode(),
            "error_code": self.error_code,
        }


class SealedSurface(Protocol):
    registry_public_key: str | None  # hex, as configured: a hint for clients, never trusted

    def workers(self, model: str) -> list[dict[str, Any]]: ...
    def registry(self) -> list[dict[str, Any]]: ...
    def collateral(self, fmspc: str) -> dict[str, Any] | None: ...
    def relay(self, account_id: str, sealed: ClientSealed) -> AsyncIterator[RelayedChunk]: ...
    async def charges(self, account_id: str, since_ms: int) -> list[dict[str, Any]]: ...


class _Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    worker_id: str = Field(min_length=1, max_length=63)
    enc: str
    wrapped_key: str


class SealedBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    version: Literal[1]
    request_id: str
    endpoint: Literal["chat.completions", "completions", "embeddings"]
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int = Field(ge=1)
    max_coefficient: int | None = Field(None, ge=1, le=1_000_000)
    timeout: float | None = Field(None, gt=0)
    suite: str = Field(min_length=1, max_length=128)
    ciphertext: str
    recipients: list[_Recipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)


def _bytes(value: str, param: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"'{param}' is not base64.", param=param) from None


def parse_sealed(raw: bytes, settings: ApiSettings) -> ClientSealed:
    """Validate the envelope's metadata with the gateway's own limits (it sees nothing else)."""
    try:
        body = SealedBody.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None
    if not _UUID.match(body.request_id):
        raise InvalidRequest("request_id must be a lower-case UUID.", param="request_id")
    if body.max_tokens > settings.max_output_tokens:
        raise InvalidRequest(
            f"max_tokens is {body.max_tokens}; this gateway allows at most "
            f"{settings.max_output_tokens}.",
            param="max_tokens",
        )
    timeout = body.timeout if body.timeout is not None else settings.default_timeout
    if timeout > settings.max_timeout:
        raise InvalidRequest(
            f"timeout is {timeout} s; this gateway allows at most {settings.max_timeout} s.",
            param="timeout",
        )
    ciphertext = _bytes(body.ciphertext, "ciphertext")
    if len(ciphertext) <= _AEAD_TAG:
        raise InvalidRequest("ciphertext is too short to hold a request.", param="ciphertext")
    recipients = {
        r.worker_id: WrappedKey(_bytes(r.enc, "enc"), _bytes(r.wrapped_key, "wrapped_key"))
        for r in body.recipients
    }
    request = InferenceRequest(
        request_id=body.request_id,
        endpoint=body.endpoint,
        model=body.model,
        body={},
        max_tokens=body.max_tokens,
        max_coefficient=body.max_coefficient or settings.default_max_coefficient,
        timeout=timeout,
        stream=True,
        # The body's exact size: billing holds for it as for a body the gateway saw.
        prompt_bytes=len(ciphertext) - _AEAD_TAG,
    )
    return ClientSealed(request, body.suite, ciphertext, recipients)
