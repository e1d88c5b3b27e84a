"""Usage receipts as billing sees them, and how their signatures are checked.

Billing does not fix the signed byte encoding: that belongs to `cocoon.core.crypto` (canonical
bytes under a domain). `Ed25519ReceiptVerifier` takes the encoder as a callable, checks that the
receipt's key is the one in the worker's *current* verdict, then verifies the Ed25519 signature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cocoon.billing.money import BillingError, check_id
from cocoon.billing.pricing import Usage
from cocoon.core.codec.timestamps import epoch_millis
from cocoon.core.crypto.canonical import signed_message
from cocoon.core.crypto.receipts import RECEIPT_DOMAIN


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


def canonical_message(receipt: Receipt) -> bytes:
    """The bytes a worker signs with `cocoon.core.crypto.receipts.sign_receipt`."""
    return signed_message(RECEIPT_DOMAIN, receipt_fields(receipt))


def receipt_from_record(record: Mapping[str, Any]) -> Receipt:
    """A billing Receipt from a decoded `cocoon.inference.UsageReceipt` Avro record."""
    try:
        return Receipt(
            receipt_id=str(record["receipt_id"]),
            request_id=str(record["request_id"]),
            attempt=int(record["attempt"]),
            worker_id=str(record["worker_id"]),
            model=str(record["model"]),
            usage=Usage(
                record["prompt_tokens"],
                record["cached_prompt_tokens"],
                record["completion_tokens"],
                record["reasoning_tokens"],
            ),
            coefficient=int(record["coefficient"]),
            completed=bool(record["completed"]),
            signing_key=bytes(record["signing_key"]),
            signature=bytes(record["signature"]),
            started_at_ms=epoch_millis(record["started_at"]),
            finished_at_ms=epoch_millis(record["finished_at"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BillingError(f"malformed usage receipt record: {exc!r}") from None


class Rejection(StrEnum):
    """Why a receipt was refused (recorded against the worker for the scheduler)."""

    UNKNOWN_REQUEST = "unknown_request"
    DUPLICATE_REQUEST = "second_receipt_for_request"
    HOLD_CLOSED = "hold_already_released"
    SUPERSEDED_ATTEMPT = "superseded_attempt"
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

    With `threads` > 1, `check_ahead` verifies a batch's signatures on that many threads before
    the batch is captured in order (OpenSSL's Ed25519 verify releases the GIL, and it is most of
    a capture's cost). Only the signature is checked ahead; whether the key is the worker's
    *current* one is still decided at capture, in order.
    """

    def __init__(
        self,
        current_key: Callable[[str], bytes | None],
        message: Callable[[Receipt], bytes],
        *,
        threads: int = 1,
    ) -> None:
        self._current_key = current_key
        self._message = message
        self._loaded: dict[bytes, Ed25519PublicKey] = {}
        self._threads = max(1, threads)
        self._pool = (
            ThreadPoolExecutor(self._threads - 1, thread_name_prefix="receipt-verify")
            if self._threads > 1
            else None
        )
        # Signature verdicts of the last batch checked ahead. Keyed by the whole receipt: an
        # equal receipt has the same key, signature and signed bytes.
        self._checked: dict[Receipt, bool] = {}

    def __call__(self, receipt: Receipt) -> bool:
        key = self._current_key(receipt.worker_id)
        if key is None or bytes(receipt.signing_key) != bytes(key):
            return False
        checked = self._checked.pop(receipt, None)
        if checked is not None:
            return checked
        public = self._public(key)
        return public is not None and _valid(public, receipt.signature, self._message(receipt))

    def check_ahead(self, receipts: Sequence[Receipt]) -> None:
        """Verify the signatures of `receipts` across the threads (this one included)."""
        self._checked = {}
        if self._pool is None or len(receipts) < 2:
            return
        jobs: list[tuple[Receipt, Ed25519PublicKey, bytes, bytes]] = []
        for receipt in receipts:
            key = self._current_key(receipt.worker_id)
            if key is None or bytes(receipt.signing_key) != bytes(key):
                continue  # refused at capture without a signature check
            public = self._public(key)
            if public is None:
                continue
            # The signed bytes are built here: that is Python work, which holds the GIL.
            jobs.append((receipt, public, bytes(receipt.signature), self._message(receipt)))
        share = -(-len(jobs) // self._threads)
        chunks = [jobs[i : i + share] for i in range(0, len(jobs), share)]
        others = [self._pool.submit(_verify_all, chunk) for chunk in chunks[1:]]
        results = _verify_all(chunks[0]) if chunks else []
        for future in others:
            results += future.result()
        self._checked.update(zip((job[0] for job in jobs), results, strict=True))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _public(self, key: bytes) -> Ed25519PublicKey | None:
        public = self._loaded.get(key)
        if public is None:
            try:
                public = Ed25519PublicKey.from_public_bytes(key)
            except ValueError:
                return None
            self._loaded[key] = public
        return public


def _valid(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public.verify(bytes(signature), message)
    except InvalidSignature:
        return False
    return True


def _verify_all(jobs: Sequence[tuple[Receipt, Ed25519PublicKey, bytes, bytes]]) -> list[bool]:
    return [_valid(public, signature, message) for _, public, signature, message in jobs]
