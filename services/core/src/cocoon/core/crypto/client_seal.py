"""The worker's side of a client-sealed request (docs/sealed-requests.md).

The client sealed the body once under a fresh request key and wrapped that key with HPKE to
each candidate worker's attested key. The worker unwraps its copy, opens the body, and seals
its answer under a stream key derived for itself and this attempt:

    ctx(p, ...) = canonical_bytes({"purpose": p, ...})
    request_key = HPKE single-shot Open(sk_worker, enc ‖ wrapped,
                                        info = ctx("cocoon/client-key/v1", request_id, worker_id,
                                                   model, suite))
    body_key    = HKDF-SHA256(request_key, info = ctx("cocoon/client-body/v1", request_id, model))
    body        = ChaCha20-Poly1305 Open(body_key, nonce 0^12, ciphertext,
                                         aad = ctx("cocoon/client-body/v1", request_id, model))
    stream_key  = HKDF-SHA256(
        request_key, info = ctx("cocoon/client-response/v1", request_id, worker_id, attempt))

The client library (`cocoon.client.seal`) implements the other side without importing this
package; tests/client checks the two against each other.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cocoon.core.crypto.canonical import canonical_bytes
from cocoon.core.crypto.errors import CryptoError, OpenError
from cocoon.core.crypto.keys import HpkeSuite, WorkerKeys

CLIENT_KEY_LEN = 32
BODY_PURPOSE = "cocoon/client-body/v1"
KEY_PURPOSE = "cocoon/client-key/v1"
RESPONSE_PURPOSE = "cocoon/client-response/v1"


def _derive(request_key: bytes, purpose: str, **context: str | int) -> bytes:
    info = canonical_bytes({"purpose": purpose, **context})
    return HKDF(hashes.SHA256(), CLIENT_KEY_LEN, salt=None, info=info).derive(request_key)


def client_key_info(request_id: str, worker_id: str, model: str, suite: HpkeSuite) -> bytes:
    return canonical_bytes(
        {
            "purpose": KEY_PURPOSE,
            "request_id": request_id,
            "worker_id": worker_id,
            "model": model,
            "suite": suite.value,
        }
    )


def open_client_request(
    keys: WorkerKeys,
    *,
    request_id: str,
    worker_id: str,
    model: str,
    suite: HpkeSuite,
    enc: bytes,
    wrapped_key: bytes,
    ciphertext: bytes,
) -> tuple[bytes, bytes]:
    """(body, request_key), or OpenError: not for this worker, request or model, or altered."""
    suite = HpkeSuite(suite)
    if len(enc) != suite.enc_length():
        raise OpenError(f"encapsulated key must be {suite.enc_length()} bytes for {suite.value}")
    try:
        request_key = suite.suite().decrypt(
            bytes(enc) + bytes(wrapped_key),
            keys.hpke_private_key(suite),
            info=client_key_info(request_id, worker_id, model, suite),
        )
    except InvalidTag:
        raise OpenError(
            f"cannot unwrap the key of request {request_id}: not sealed to this worker, or "
            "request, worker or model differ"
        ) from None
    except (CryptoError, ValueError, TypeError) as exc:
        raise OpenError(f"cannot unwrap the key of request {request_id}: {exc}") from None
    if len(request_key) != CLIENT_KEY_LEN:
        raise OpenError("the wrapped request key has the wrong length")
    aad = canonical_bytes({"purpose": BODY_PURPOSE, "request_id": request_id, "model": model})
    body_key = _derive(request_key, BODY_PURPOSE, request_id=request_id, model=model)
    try:
        body = ChaCha20Poly1305(body_key).decrypt(bytes(12), bytes(ciphertext), aad)
    except InvalidTag:
        raise OpenError(f"the body of request {request_id} does not authenticate") from None
    return body, request_key


def client_stream_key(request_key: bytes, request_id: str, worker_id: str, attempt: int) -> bytes:
    """The response key of one placement: a new worker or attempt never reuses a key."""
    return _derive(
        request_key, RESPONSE_PURPOSE, request_id=request_id, worker_id=worker_id, attempt=attempt
    )
