"""The service key and the signed verdict records it issues (see cocoon.core.verdicts).

The key is an Ed25519 private key in a PKCS#8 PEM file (mode 0600), never in the repository.
Development creates it on first use under the cache dir and writes `<file>.pub` with the public
key's hex, which gateways and schedulers pin.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.attestation.claims import Claims
from cocoon.attestation.verify import Verdict as Check
from cocoon.core.codec import models
from cocoon.core.crypto import DEFAULT_SUITE
from cocoon.core.crypto.canonical import sign_canonical
from cocoon.core.paths import cache_dir
from cocoon.core.verdicts import (
    REJECTED,
    REVOKED,
    TRUSTED,
    key_id,
    signed_fields,
    signing_domain,
)


class ServiceKeyError(RuntimeError):
    """The service key file is missing (and may not be created) or unreadable."""


def default_key_path() -> Path:
    return cache_dir() / "attestation" / "service-key.pem"


@dataclass(frozen=True)
class ServiceKey:
    private: Ed25519PrivateKey
    public: bytes  # 32 raw bytes, what readers pin

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    @classmethod
    def generate(cls) -> ServiceKey:
        return cls._of(Ed25519PrivateKey.generate())

    @classmethod
    def _of(cls, private: Ed25519PrivateKey) -> ServiceKey:
        public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(private, public)

    @classmethod
    def load(cls, path: Path, *, create: bool = False) -> ServiceKey:
        """Load the key; with `create`, make one (under a lock) when the file is missing."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                if not create:
                    raise ServiceKeyError(f"attestation service key {path} does not exist")
                cls._write(path, Ed25519PrivateKey.generate())
            try:
                private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (OSError, ValueError) as exc:
                raise ServiceKeyError(f"cannot read service key {path}: {exc}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ServiceKeyError(f"{path} is not an Ed25519 private key")
        key = cls._of(private)
        pub = path.with_suffix(".pub")
        if not pub.exists() or pub.read_text().strip() != key.public.hex():
            pub.write_text(key.public.hex() + "\n")
        return key

    @staticmethod
    def _write(path: Path, private: Ed25519PrivateKey) -> None:
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        os.replace(tmp, path)

    def sign(self, record: dict[str, Any]) -> models.Verdict:
        """The verdict model with `attestor_key_id` set and the signature over the fields."""
        record = {**record, "attestor_key_id": self.key_id, "signature": bytes(64)}
        fields = signed_fields(record)
        signature = sign_canonical(self.private, signing_domain(fields), fields)
        # The model holds datetimes; ms -> datetime -> ms is exact, so the signature still holds.
        times = {t: _datetime(record[t]) for t in ("issued_at", "expires_at")}
        return models.Verdict(**{**record, **times, "signature": signature})


def _datetime(value: int | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromtimestamp(value / 1000, UTC)


def _base(worker_id: str, evidence_id: str | None, now_ms: int, registry_version: int) -> dict:
    return {
        "verdict_id": f"vd-{uuid.uuid4().hex}",
        "worker_id": worker_id,
        "evidence_id": evidence_id,
        "registry_version": registry_version,
        "issued_at": now_ms,
        "expires_at": now_ms,  # non-TRUSTED verdicts confer nothing, so they expire at once
        "models": [],
    }


def trusted_record(
    *,
    worker_id: str,
    evidence_id: str,
    claims: Claims,
    check: Check,
    now_ms: int,
    expires_ms: int,
    registry_version: int,
    challenge: bytes,
    measurements: bytes,
) -> dict[str, Any]:
    """Fields of a TRUSTED verdict for an accepted verification (unsigned)."""
    return {
        **_base(worker_id, evidence_id, now_ms, registry_version),
        "status": TRUSTED,
        "reason": None,
        "image_hash": bytes.fromhex(check.image_hash or ""),
        "models": [claims.model],
        "signing_key": claims.signing_key,
        "hpke_public_key": claims.hpke_mlkem768_x25519,
        "hpke_suite": DEFAULT_SUITE.value,
        "hpke_x25519": claims.hpke_x25519,
        "tcb_status": check.tcb_status,
        "expires_at": expires_ms,
        "report_data": bytes.fromhex(check.report_data or ""),
        "measurements": measurements,
        "challenge": challenge,
        # Where the earnings made under this verdict are paid (None: claims v1, no address).
        "payout_address": claims.payout_address,
    }


def rejected_record(
    *,
    worker_id: str,
    evidence_id: str | None,
    reason: str,
    now_ms: int,
    registry_version: int,
    check: Check | None = None,
) -> dict[str, Any]:
    """Fields of a REJECTED verdict; what was learnt before the failure is kept for operators."""
    record = {
        **_base(worker_id, evidence_id, now_ms, registry_version),
        "status": REJECTED,
        "reason": reason,
    }
    if check is not None:
        record["tcb_status"] = check.tcb_status
        if check.image_hash:
            record["image_hash"] = bytes.fromhex(check.image_hash)
    return record


def revoked_record(
    *, worker_id: str, reason: str, now_ms: int, registry_version: int, previous: Any
) -> dict[str, Any]:
    """Fields of a REVOKED verdict withdrawing `previous` (a TRUSTED verdict model)."""
    return {
        **_base(worker_id, previous.evidence_id, now_ms, registry_version),
        "status": REVOKED,
        "reason": reason,
        "image_hash": previous.image_hash,
        "signing_key": previous.signing_key,
        "tcb_status": previous.tcb_status,
    }
