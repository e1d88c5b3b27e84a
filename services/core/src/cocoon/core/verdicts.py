"""Attestation verdicts as their readers see them: the signed fields and their verification.

The attestation service signs every record it writes to `attestation.verdicts` with its Ed25519
key. Gateways, schedulers and billing pin that key's 32 raw bytes and call:

    from cocoon.core.verdicts import VerdictError, verify_verdict

    try:
        v = verify_verdict(message.value, pinned_key, time.time())
    except VerdictError as exc:           # bad signature, other key, expired, malformed
        ...                               # treat the worker as untrusted; exc.code says why
    if v.trusted:                         # status TRUSTED and not expired
        keys = v.signing_key, v.hpke_public_key, v.hpke_x25519

Signed message: `canonical_bytes({"domain": VERDICT_DOMAIN, "payload": fields})` (see
cocoon.core.crypto) where `fields` are exactly SIGNED_FIELDS, timestamps as integer unix
milliseconds and absent values as None. The list is fixed by the domain, not by the Avro version,
so a later schema version that adds fields does not change what old verifiers check.

A verdict that carries a payout address (the worker attested claims v2) is signed under
VERDICT_DOMAIN_V2 over SIGNED_FIELDS_V2 (the same fields plus `payout_address`); one without is
signed exactly as before. The domain follows from the record, and since it is inside the signed
bytes, an address can be neither stripped from a v2 verdict nor added to a v1 one. A reader
older than this module refuses v2 verdicts (bad signature), so readers upgrade first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from cocoon.core.codec.timestamps import epoch_millis
from cocoon.core.crypto.canonical import load_ed25519_public, signed_message, verify_canonical
from cocoon.core.crypto.errors import CryptoError
from cocoon.core.runtime.settings import ServiceSettings

VERDICT_DOMAIN = "cocoon/attestation-verdict/v1"
VERDICT_DOMAIN_V2 = "cocoon/attestation-verdict/v2"
TRUSTED, REJECTED, REVOKED, EXPIRED = "TRUSTED", "REJECTED", "REVOKED", "EXPIRED"

SIGNED_FIELDS: tuple[str, ...] = (
    "verdict_id",
    "worker_id",
    "evidence_id",
    "status",
    "reason",
    "image_hash",
    "models",
    "signing_key",
    "hpke_public_key",
    "hpke_suite",
    "hpke_x25519",
    "tcb_status",
    "registry_version",
    "issued_at",
    "expires_at",
    "report_data",
    "measurements",
    "challenge",
    "attestor_key_id",
)
SIGNED_FIELDS_V2: tuple[str, ...] = (*SIGNED_FIELDS, "payout_address")
_TIMES = ("issued_at", "expires_at")


class VerdictError(ValueError):
    """A verdict that must not be trusted; `code` is one of the class constants."""

    MALFORMED = "malformed"
    WRONG_KEY = "wrong_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class VerifiedVerdict:
    """A verdict whose signature checked out under the pinned key."""

    verdict_id: str
    worker_id: str
    status: str  # TRUSTED | REJECTED | REVOKED | EXPIRED
    reason: str | None
    models: tuple[str, ...]
    signing_key: bytes | None  # worker's Ed25519 key (receipts)
    hpke_public_key: bytes | None  # ML-KEM-768+X25519 (1216 bytes), the default suite
    hpke_suite: str | None
    hpke_x25519: bytes | None  # classical X25519 suite
    image_hash: bytes | None
    tcb_status: str | None
    registry_version: int
    issued_at: float  # unix seconds
    expires_at: float  # unix seconds
    challenge: bytes | None
    payout_address: str | None = None  # raw TON address the worker attested (claims v2)

    @property
    def trusted(self) -> bool:
        """Only TRUSTED verdicts that were unexpired at verification time get here as such."""
        return self.status == TRUSTED


def _millis(value: Any) -> int:
    try:
        return epoch_millis(value)
    except TypeError as exc:
        raise VerdictError(VerdictError.MALFORMED, str(exc)) from None


def _as_mapping(verdict: Any) -> Mapping[str, Any]:
    if isinstance(verdict, Mapping):
        return verdict
    if hasattr(verdict, "model_dump"):  # a generated pydantic model
        return verdict.model_dump(mode="python")
    raise VerdictError(VerdictError.MALFORMED, f"not a verdict: {type(verdict).__name__}")


def signed_fields(verdict: Any) -> dict[str, Any]:
    """The mapping the signature covers, from a verdict model or its Avro dict."""
    d = _as_mapping(verdict)
    names = SIGNED_FIELDS if d.get("payout_address") is None else SIGNED_FIELDS_V2
    out: dict[str, Any] = {}
    for name in names:
        value = d.get(name)
        if name in _TIMES:
            value = _millis(value)
        elif name == "models":
            value = [str(m) for m in (value or ())]
        elif name == "status" and value is not None:
            value = str(value)
        elif isinstance(value, bytearray | memoryview):
            value = bytes(value)
        out[name] = value
    return out


def signing_domain(fields: Mapping[str, Any]) -> str:
    """The domain a verdict's `signed_fields` are signed under (v2 with a payout address)."""
    return VERDICT_DOMAIN if fields.get("payout_address") is None else VERDICT_DOMAIN_V2


def verdict_message(verdict: Any) -> bytes:
    """The exact bytes the service signs, for verifiers with their own Ed25519 code."""
    fields = signed_fields(verdict)
    return signed_message(signing_domain(fields), fields)


def key_id(public_key: bytes) -> str:
    """The `attestor_key_id` of a service key: 'att-' + first 8 bytes of SHA-256, hex."""
    return "att-" + hashlib.sha256(bytes(public_key)).digest()[:8].hex()


def load_pinned_key(value: str | bytes | Path) -> bytes:
    """32 raw bytes from raw bytes, 64 hex digits, or a file holding the hex (`*.pub`)."""
    if isinstance(value, bytes | bytearray) and len(value) == 32:
        return bytes(value)
    if isinstance(value, Path):
        text = value.read_text()
    elif isinstance(value, bytes | bytearray):
        text = bytes(value).decode("ascii", "replace")
    else:
        text = value
        if len(text.strip()) != 64 and Path(text).is_file():
            text = Path(text).read_text()
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise VerdictError(VerdictError.MALFORMED, "a pinned key is 32 bytes (64 hex digits)")
    return raw


def verify_verdict(
    verdict: Any, pinned_public_key: bytes, now: float, *, worker_id: str | None = None
) -> VerifiedVerdict:
    """Check the verdict's signature under the pinned key and, for TRUSTED, its expiry.

    `verdict` is the generated `models.Verdict` (or its Avro dict); `now` is unix seconds;
    `worker_id`, when given (the record's key), must be the worker the verdict is about.
    Raises `VerdictError` (with `.code`) for anything that must not be trusted. Rejections and
    revocations verify too and come back with `trusted == False`.
    """
    fields = signed_fields(verdict)
    d = _as_mapping(verdict)
    signature = d.get("signature")
    if not isinstance(signature, bytes | bytearray) or len(signature) != 64:
        raise VerdictError(VerdictError.MALFORMED, "verdict has no 64-byte signature")
    try:
        pinned = bytes(pinned_public_key)
        load_ed25519_public(pinned)
    except (CryptoError, TypeError) as exc:
        raise VerdictError(VerdictError.MALFORMED, f"pinned key unusable: {exc}") from None
    if fields["attestor_key_id"] != key_id(pinned):
        raise VerdictError(
            VerdictError.WRONG_KEY,
            f"verdict signed by {fields['attestor_key_id']!r}, pinned key is {key_id(pinned)!r}",
        )
    try:
        verify_canonical(pinned, signing_domain(fields), fields, bytes(signature))
    except CryptoError:
        raise VerdictError(
            VerdictError.BAD_SIGNATURE, f"verdict {fields['verdict_id']!r}: bad signature"
        ) from None
    if worker_id is not None and fields["worker_id"] != worker_id:
        # A correctly signed verdict for worker A must not be accepted under worker B's key.
        raise VerdictError(
            VerdictError.MALFORMED,
            f"verdict is about {fields['worker_id']!r}, record key is {worker_id!r}",
        )
    expires = fields["expires_at"] / 1000
    if fields["status"] == TRUSTED:
        if not fields["signing_key"] or not fields["hpke_public_key"]:
            raise VerdictError(VerdictError.MALFORMED, "TRUSTED verdict without worker keys")
        if now >= expires:
            raise VerdictError(
                VerdictError.EXPIRED,
                f"verdict {fields['verdict_id']!r} for {fields['worker_id']!r} expired at "
                f"{expires:.0f} (now {now:.0f})",
            )
    return VerifiedVerdict(
        verdict_id=str(fields["verdict_id"]),
        worker_id=str(fields["worker_id"]),
        status=str(fields["status"]),
        reason=fields["reason"],
        models=tuple(fields["models"]),
        signing_key=fields["signing_key"],
        hpke_public_key=fields["hpke_public_key"],
        hpke_suite=fields["hpke_suite"],
        hpke_x25519=fields["hpke_x25519"],
        image_hash=fields["image_hash"],
        tcb_status=fields["tcb_status"],
        registry_version=int(fields["registry_version"] or 0),
        issued_at=fields["issued_at"] / 1000,
        expires_at=expires,
        challenge=fields["challenge"],
        payout_address=fields.get("payout_address"),
    )


class PinnedKeySettings(ServiceSettings):
    """Settings of a service that accepts only verdicts the attestation service signed.

    Its Ed25519 key: 64 hex digits (or a file path) in COCOON_ATTESTATION_PUBLIC_KEY, or a file
    holding them in COCOON_ATTESTATION_PUBLIC_KEY_FILE. One is required: verdicts are never
    unchecked.
    """

    attestation_public_key: str = Field("", description="64 hex digits (or a file path)")
    attestation_public_key_file: Path | None = None

    def pinned_key(self) -> bytes:
        if self.attestation_public_key:
            return load_pinned_key(self.attestation_public_key)
        if self.attestation_public_key_file is not None:
            return load_pinned_key(self.attestation_public_key_file)
        raise ValueError(
            "the attestation service's public key is required: set "
            "COCOON_ATTESTATION_PUBLIC_KEY (hex) or COCOON_ATTESTATION_PUBLIC_KEY_FILE"
        )
