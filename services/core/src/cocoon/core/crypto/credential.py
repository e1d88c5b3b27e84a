"""Worker credentials: a Kafka password HPKE-sealed to a worker's attested key.

The attestation service seals each trusted worker's SCRAM password to the HPKE key in that
worker's TRUSTED verdict (RFC 9180, base mode, single-shot), so the host that carries the record
cannot open it; only the enclave holding the private key can. The HPKE `info` is the canonical
encoding of {purpose, worker_id, username, signing_key, suite}: a sealed password opens only
for the worker, user and attested process it was issued to.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from cocoon.core.crypto.canonical import canonical_bytes
from cocoon.core.crypto.errors import CryptoError, OpenError
from cocoon.core.crypto.keys import HpkeSuite, SingleHpkeKey, WorkerKeys

_PURPOSE = "cocoon/worker-credential/v1"


@dataclass(frozen=True)
class SealedSecret:
    """What travels in a WorkerCredential (hpke_suite, hpke_enc, sealed_password)."""

    suite: HpkeSuite
    enc: bytes
    ciphertext: bytes


def credential_info(worker_id: str, username: str, signing_key: bytes, suite: HpkeSuite) -> bytes:
    """The HPKE `info` binding a sealed password to its worker, user and attested process."""
    return canonical_bytes(
        {
            "purpose": _PURPOSE,
            "worker_id": worker_id,
            "username": username,
            "signing_key": signing_key,
            "suite": suite.value,
        }
    )


def seal_password(
    key: SingleHpkeKey, worker_id: str, username: str, signing_key: bytes, password: str
) -> SealedSecret:
    """Seal `password` to the worker's attested HPKE key."""
    info = credential_info(worker_id, username, signing_key, key.suite)
    blob = key.suite.suite().encrypt(password.encode(), key.hpke_public_key(key.suite), info=info)
    cut = key.suite.enc_length()  # cryptography returns enc ‖ ciphertext
    return SealedSecret(key.suite, blob[:cut], blob[cut:])


def open_password(keys: WorkerKeys, worker_id: str, username: str, sealed: SealedSecret) -> str:
    """Open a password sealed to this worker's keys, or raise OpenError."""
    suite = sealed.suite
    if len(sealed.enc) != suite.enc_length():
        raise OpenError(f"encapsulated key must be {suite.enc_length()} bytes for {suite.value}")
    info = credential_info(worker_id, username, keys.public.signing_key, suite)
    try:
        plain = suite.suite().decrypt(
            sealed.enc + sealed.ciphertext, keys.hpke_private_key(suite), info=info
        )
    except InvalidTag:
        raise OpenError(
            f"cannot open the credential of {username}: sealed to another key, worker or user"
        ) from None
    except (CryptoError, ValueError, TypeError) as exc:
        raise OpenError(f"cannot open the credential of {username}: {exc}") from None
    try:
        return plain.decode()
    except UnicodeDecodeError:
        raise OpenError(f"the credential of {username} is not text") from None
