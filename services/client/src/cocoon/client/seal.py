"""The client's envelope: a request sealed once, its key wrapped to several attested workers.

    request_key = 32 random bytes, fresh per request
    ctx(p, ...) = canonical_bytes({"purpose": p, ...})
    body_key    = HKDF-SHA256(request_key, info = ctx("cocoon/client-body/v1", request_id, model))
    ciphertext  = ChaCha20-Poly1305(body_key, nonce 0^12, body,
                                    aad = ctx("cocoon/client-body/v1", request_id, model))
    per worker  : enc ‖ wrapped = HPKE base mode single-shot Seal (RFC 9180) of request_key to the
                  worker's attested key, info = ctx("cocoon/client-key/v1", request_id, worker_id,
                  model, suite)
    stream key  = HKDF-SHA256(
        request_key, info = ctx("cocoon/client-response/v1", request_id, worker_id, attempt))

The answer comes back as `cocoon/response/v1` chunks (docs/crypto.md) under the stream key of
the worker and attempt that produced them, so two placements never share a key and nonce.
The same construction is implemented for the worker in `cocoon.core.crypto.client_seal`;
tests/client pins the two together. docs/sealed-requests.md is the full protocol.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cocoon.client.canonical import canonical_bytes, verify_signed
from cocoon.client.errors import WireError

KEY_LEN = 32
SUITE_HYBRID = "MLKEM768-X25519/HKDF-SHA256/ChaCha20Poly1305"
SUITE_X25519 = "DHKEM-X25519-HKDF-SHA256/HKDF-SHA256/ChaCha20Poly1305"
DEFAULT_SUITE = SUITE_HYBRID  # post-quantum hybrid: safe while either ML-KEM-768 or X25519 holds
_BODY = "cocoon/client-body/v1"
_KEY = "cocoon/client-key/v1"
_RESPONSE_KEY = "cocoon/client-response/v1"
_STREAM = "cocoon/response/v1"
RECEIPT_DOMAIN = "cocoon/usage-receipt/v1"
RECEIPT_FIELDS = (
    "receipt_id",
    "request_id",
    "attempt",
    "worker_id",
    "model",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "coefficient",
    "completed",
    "started_at",
    "finished_at",
)


def _hpke_suite(suite: str) -> hpke.Suite:
    kem = {SUITE_HYBRID: hpke.KEM.MLKEM768_X25519, SUITE_X25519: hpke.KEM.X25519}.get(suite)
    if kem is None:
        raise WireError(f"unknown HPKE suite {suite!r}")
    return hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def hpke_public_key(
    suite: str, hpke_x25519: bytes, hpke_mlkem768_x25519: bytes
) -> x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey:
    """The key of `suite` from the worker's attested claims."""
    if suite == SUITE_X25519:
        return x25519.X25519PublicKey.from_public_bytes(hpke_x25519)
    if suite == SUITE_HYBRID:
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(hpke_mlkem768_x25519[:1184]),
            x25519.X25519PublicKey.from_public_bytes(hpke_mlkem768_x25519[1184:]),
        )
    raise WireError(f"unknown HPKE suite {suite!r}")


def derive(request_key: bytes, purpose: str, **context: str | int) -> bytes:
    info = canonical_bytes({"purpose": purpose, **context})
    return HKDF(hashes.SHA256(), KEY_LEN, salt=None, info=info).derive(request_key)


def body_aad(request_id: str, model: str) -> bytes:
    return canonical_bytes({"purpose": _BODY, "request_id": request_id, "model": model})


def key_info(request_id: str, worker_id: str, model: str, suite: str) -> bytes:
    return canonical_bytes(
        {
            "purpose": _KEY,
            "request_id": request_id,
            "worker_id": worker_id,
            "model": model,
            "suite": suite,
        }
    )


@dataclass(frozen=True)
class Recipient:
    worker_id: str
    suite: str
    enc: bytes  # HPKE encapsulated key
    wrapped_key: bytes  # HPKE ciphertext of the request key


@dataclass(frozen=True)
class SealedEnvelope:
    request_id: str
    model: str
    ciphertext: bytes
    recipients: tuple[Recipient, ...]


@dataclass(frozen=True)
class WorkerKey:
    """An attested worker key the client decided to seal to."""

    worker_id: str
    suite: str
    public_key: x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
    signing_key: bytes  # Ed25519, for its receipts


def seal(
    body: bytes, request_id: str, model: str, workers: list[WorkerKey]
) -> tuple[SealedEnvelope, bytes]:
    """Seal `body` once and wrap its key to every worker; return (envelope, request_key)."""
    if not workers:
        raise WireError("no worker to seal to")
    request_key = os.urandom(KEY_LEN)
    body_key = derive(request_key, _BODY, request_id=request_id, model=model)
    ciphertext = ChaCha20Poly1305(body_key).encrypt(bytes(12), body, body_aad(request_id, model))
    recipients = []
    for worker in workers:
        suite = _hpke_suite(worker.suite)
        blob = suite.encrypt(
            request_key,
            worker.public_key,
            info=key_info(request_id, worker.worker_id, model, worker.suite),
        )
        cut = len(blob) - KEY_LEN - 16  # the rest is the wrapped key and its tag
        recipients.append(Recipient(worker.worker_id, worker.suite, blob[:cut], blob[cut:]))
    return SealedEnvelope(request_id, model, ciphertext, tuple(recipients)), request_key


class StreamOpener:
    """Opens one attempt's `cocoon/response/v1` chunks, strictly in order, until the final one."""

    def __init__(self, request_key: bytes, request_id: str, worker_id: str, attempt: int) -> None:
        key = derive(
            request_key, _RESPONSE_KEY, request_id=request_id, worker_id=worker_id, attempt=attempt
        )
        self._aead = ChaCha20Poly1305(key)
        self.request_id = request_id
        self.worker_id = worker_id
        self.attempt = attempt
        self.next_seq = 0
        self.finished = False
        self.broken = False

    def open(self, seq: int, final: bool, ciphertext: bytes) -> bytes:
        if self.broken:
            raise WireError("the response stream already failed")
        if self.finished or seq != self.next_seq:
            self.broken = True
            raise WireError(f"response chunk {seq} out of order (expected {self.next_seq})")
        aad = canonical_bytes(
            {"purpose": _STREAM, "request_id": self.request_id, "seq": seq, "final": final}
        )
        try:
            plain = self._aead.decrypt(
                b"\x00\x00\x00\x00" + struct.pack(">Q", seq), ciphertext, aad
            )
        except InvalidTag:
            self.broken = True
            raise WireError(f"response chunk {seq} does not authenticate") from None
        self.next_seq += 1
        self.finished = final
        return plain


def verify_receipt(
    receipt: dict, signing_key: bytes, *, request_id: str, worker_id: str, attempt: int
) -> dict:
    """Check a worker's usage receipt against its attested key and this request; return it."""
    try:
        fields = {name: receipt[name] for name in RECEIPT_FIELDS}
        signature = bytes.fromhex(receipt["signature"])
        claimed_key = bytes.fromhex(receipt["signing_key"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"malformed receipt: {exc!r}") from None
    if claimed_key != signing_key:
        raise WireError("the receipt is signed by a key other than the worker's attested key")
    if (fields["request_id"], fields["worker_id"], fields["attempt"]) != (
        request_id,
        worker_id,
        attempt,
    ):
        raise WireError("the receipt is for another request, worker or attempt")
    if not verify_signed(
        signing_key, RECEIPT_DOMAIN, {**fields, "signing_key": signing_key}, signature
    ):
        raise WireError("the receipt signature does not verify")
    return {**fields, "signing_key": receipt["signing_key"], "signature": receipt["signature"]}
