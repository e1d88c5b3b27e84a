"""Request sealing: HPKE (RFC 9180, base mode, single-shot) to the assigned worker's attested key.

The plaintext is `response_key (32 bytes) ‖ request body`; the HPKE `info` is the canonical
encoding of {purpose, request_id, worker_id, model, suite}, so a payload opens only for the
worker, request and model it was sealed for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag

from cocoon.core.crypto.canonical import canonical_bytes
from cocoon.core.crypto.errors import CryptoError, OpenError
from cocoon.core.crypto.keys import (
    DEFAULT_SUITE,
    HpkeSuite,
    SingleHpkeKey,
    WorkerKeys,
    WorkerPublicKeys,
)

RESPONSE_KEY_LEN = 32
_PURPOSE = "cocoon/request/v1"


@dataclass(frozen=True)
class SealedRequest:
    """What travels on the work topic (WorkItem's hpke_suite, hpke_enc, sealed_request)."""

    suite: HpkeSuite
    enc: bytes  # the HPKE encapsulated key
    ciphertext: bytes  # AEAD ciphertext of response_key ‖ body, with tag

    def to_record(self) -> dict[str, Any]:
        return {
            "hpke_suite": self.suite.value,
            "hpke_enc": self.enc,
            "sealed_request": self.ciphertext,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SealedRequest:
        try:
            suite = HpkeSuite(record["hpke_suite"])
            return cls(suite, bytes(record["hpke_enc"]), bytes(record["sealed_request"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise OpenError(f"malformed sealed request: {exc!r}") from None


def request_info(request_id: str, worker_id: str, model: str, suite: HpkeSuite) -> bytes:
    """The HPKE `info` binding a sealed request to its context."""
    return canonical_bytes(
        {
            "purpose": _PURPOSE,
            "request_id": request_id,
            "worker_id": worker_id,
            "model": model,
            "suite": suite.value,
        }
    )


def seal_request(
    worker_public: WorkerPublicKeys | SingleHpkeKey,
    request_id: str,
    worker_id: str,
    model: str,
    body: bytes,
    suite: HpkeSuite = DEFAULT_SUITE,
) -> tuple[SealedRequest, bytes]:
    """Seal `body` and a fresh response key to the worker; return both (keep the key secret)."""
    suite = HpkeSuite(suite)
    response_key = os.urandom(RESPONSE_KEY_LEN)
    info = request_info(request_id, worker_id, model, suite)
    blob = suite.suite().encrypt(
        response_key + bytes(body), worker_public.hpke_public_key(suite), info=info
    )
    # cryptography returns enc ‖ ciphertext; the schema carries them as two fields.
    cut = suite.enc_length()
    return SealedRequest(suite, blob[:cut], blob[cut:]), response_key


def open_request(
    worker_keys: WorkerKeys,
    request_id: str,
    worker_id: str,
    model: str,
    sealed: SealedRequest,
) -> tuple[bytes, bytes]:
    """Open a sealed request inside the worker; return (body, response_key) or raise OpenError."""
    suite = sealed.suite
    if len(sealed.enc) != suite.enc_length():
        raise OpenError(f"encapsulated key must be {suite.enc_length()} bytes for {suite.value}")
    info = request_info(request_id, worker_id, model, suite)
    try:
        plain = suite.suite().decrypt(
            sealed.enc + sealed.ciphertext, worker_keys.hpke_private_key(suite), info=info
        )
    except InvalidTag:
        raise OpenError(
            f"cannot open request {request_id}: wrong key, or request, worker or model differ"
        ) from None
    except (CryptoError, ValueError, TypeError) as exc:  # e.g. a malformed encapsulated key
        raise OpenError(f"cannot open request {request_id}: {exc}") from None
    if len(plain) < RESPONSE_KEY_LEN:
        raise OpenError("sealed request is too short to hold a response key")
    return plain[RESPONSE_KEY_LEN:], plain[:RESPONSE_KEY_LEN]
