"""Usage receipts signed by the worker's attested Ed25519 key.

Signed message: `canonical_bytes({"domain": "cocoon/usage-receipt/v1", "payload": fields})`
where `fields` are every receipt field below plus `signing_key` (raw 32 bytes), so a receipt
cannot be re-attributed to another key. Field names follow the UsageReceipt Avro schema.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cocoon.core.codec.timestamps import epoch_millis
from cocoon.core.crypto.canonical import sign_canonical, signed_message, verify_canonical
from cocoon.core.crypto.errors import CryptoError, SignatureError
from cocoon.core.crypto.keys import ED25519_LEN, WorkerKeys

RECEIPT_DOMAIN = "cocoon/usage-receipt/v1"


@dataclass(frozen=True)
class UsageReceipt:
    receipt_id: str
    request_id: str
    attempt: int
    worker_id: str
    model: str
    prompt_tokens: int  # including cached ones
    cached_prompt_tokens: int
    completion_tokens: int  # including reasoning ones
    reasoning_tokens: int
    coefficient: int  # price coefficient, 1000 = 1.0x
    completed: bool  # False when the stream ended early
    started_at: int  # unix milliseconds
    finished_at: int  # unix milliseconds

    def __post_init__(self) -> None:
        counts = (
            self.prompt_tokens,
            self.cached_prompt_tokens,
            self.completion_tokens,
            self.reasoning_tokens,
        )
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in counts):
            raise CryptoError("token counts must be non-negative integers")
        if self.cached_prompt_tokens > self.prompt_tokens:
            raise CryptoError("cached_prompt_tokens exceeds prompt_tokens")
        if self.reasoning_tokens > self.completion_tokens:
            raise CryptoError("reasoning_tokens exceeds completion_tokens")
        if self.finished_at < self.started_at:
            raise CryptoError("finished_at is before started_at")

    def fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SignedReceipt:
    receipt: UsageReceipt
    signing_key: bytes  # Ed25519 public key, raw 32 bytes
    signature: bytes  # 64 bytes

    def to_record(self) -> dict[str, Any]:
        """All fields of the UsageReceipt Avro record (timestamps as int milliseconds)."""
        return {
            **self.receipt.fields(),
            "signing_key": self.signing_key,
            "signature": self.signature,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SignedReceipt:
        try:
            values = {f.name: record[f.name] for f in dataclasses.fields(UsageReceipt)}
            values["started_at"] = epoch_millis(values["started_at"])
            values["finished_at"] = epoch_millis(values["finished_at"])
            return cls(
                UsageReceipt(**values), bytes(record["signing_key"]), bytes(record["signature"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CryptoError(f"malformed receipt record: {exc!r}") from None


def _signed_fields(receipt: UsageReceipt, signing_key: bytes) -> dict[str, Any]:
    return {**receipt.fields(), "signing_key": signing_key}


def receipt_message(receipt: UsageReceipt, signing_key: bytes) -> bytes:
    """The exact bytes a worker signs: `signed_message(RECEIPT_DOMAIN, fields + signing_key)`."""
    return signed_message(RECEIPT_DOMAIN, _signed_fields(receipt, signing_key))


def sign_receipt(keys: WorkerKeys, receipt: UsageReceipt) -> SignedReceipt:
    """Sign `receipt` with the worker's attested Ed25519 key."""
    public = keys.public.signing_key
    signature = sign_canonical(keys.signing_key, RECEIPT_DOMAIN, _signed_fields(receipt, public))
    return SignedReceipt(receipt, public, signature)


def verify_receipt(
    signed: SignedReceipt, expected_signing_key: bytes | None = None
) -> UsageReceipt:
    """Return the receipt if its signature holds (and its key is the expected, attested one)."""
    if len(signed.signing_key) != ED25519_LEN:
        raise SignatureError("receipt signing key must be 32 bytes")
    if expected_signing_key is not None and bytes(expected_signing_key) != signed.signing_key:
        raise SignatureError("receipt is signed by a key other than the worker's attested key")
    verify_canonical(
        signed.signing_key,
        RECEIPT_DOMAIN,
        _signed_fields(signed.receipt, signed.signing_key),
        signed.signature,
    )
    return signed.receipt
