"""Usage receipts as billing sees them, and how their signatures are checked.

Billing does not fix the signed byte encoding: that belongs to `cocoon.core.crypto` (canonical
bytes under a domain). `Ed25519ReceiptVerifier` takes the encoder as a callable, checks that the
receipt's key is the one in the worker's *current* verdict, then verifies the Ed25519 signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cocoon.billing.money import check_id
from cocoon.billing.pricing import Usage


@dataclass(frozen=True, slots=True)
class Receipt:
    """Fields of `cocoon.inference.UsageReceipt` that billing uses."""

    receipt_id: str
    request_id: str
    attempt: int
    worker_id: str
    model: str
    usage: Usage
    coefficient: int
    completed: bool
    signing_key: bytes
    signature: bytes
    started_at_ms: int = 0
    finished_at_ms: int = 0

    def __post_init__(self) -> None:
        check_id(self.request_id, "request_id")
        check_id(self.worker_id, "worker_id")


def receipt_fields(receipt: Receipt) -> dict[str, Any]:
    """Everything a worker signs: all receipt fields but the signature."""
    u = receipt.usage
    return {
        "receipt_id": receipt.receipt_id,
        "request_id": receipt.request_id,
        "attempt": receipt.attempt,
        "worker_id": receipt.worker_id,
        "model": receipt.model,
        "prompt_tokens": u.prompt,
        "cached_prompt_tokens": u.cached,
        "completion_tokens": u.completion,
        "reasoning_tokens": u.reasoning,
        "coefficient": receipt.coefficient,
        "completed": receipt.completed,
        "started_at": receipt.started_at_ms,
        "finished_at": receipt.finished_at_ms,
        "signing_key": receipt.signing_key,
    }


class Rejection(StrEnum):
    """Why a receipt was refused (recorded against the worker for the scheduler)."""

    UNKNOWN_REQUEST = "unknown_request"
    DUPLICATE_REQUEST = "second_receipt_for_request"
    HOLD_CLOSED = "hold_already_released"
    BAD_SIGNATURE = "bad_signature"
    TOKENS_BEYOND_HOLD = "tokens_beyond_hold"
    COEFFICIENT_ABOVE_CAP = "coefficient_above_client_cap"
    COEFFICIENT_MISMATCH = "coefficient_not_registry_price"
    INVALID = "invalid_receipt"


ReceiptVerify = Callable[[Receipt], bool]


class Ed25519ReceiptVerifier:
    """`verify(receipt) -> bool` against the key in the worker's current verdict.

    `current_key(worker_id)` returns the 32-byte Ed25519 key of the worker's current, trusted
    verdict (None when it has none); `message(receipt)` returns the exact signed bytes.
    """

    def __init__(
        self,
        current_key: Callable[[str], bytes | None],
        message: Callable[[Receipt], bytes],
    ) -> None:
        self._current_key = current_key
        self._message = message
        self._loaded: dict[bytes, Ed25519PublicKey] = {}

    def __call__(self, receipt: Receipt) -> bool:
        key = self._current_key(receipt.worker_id)
        if key is None or bytes(receipt.signing_key) != bytes(key):
            return False
        public = self._loaded.get(key)
        if public is None:
            try:
                public = Ed25519PublicKey.from_public_bytes(key)
            except ValueError:
                return False
            self._loaded[key] = public
        try:
            public.verify(bytes(receipt.signature), self._message(receipt))
        except InvalidSignature:
            return False
        return True
