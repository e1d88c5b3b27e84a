"""Crypto envelopes: HPKE-sealed requests, AEAD response streams, signed receipts and claims.

See docs/crypto.md for the formats. Everything here is plain code with no I/O.
"""

from cocoon.core.crypto.canonical import (
    canonical_bytes,
    load_ed25519_public,
    sign_canonical,
    signed_message,
    verify_canonical,
)
from cocoon.core.crypto.errors import (
    CanonicalError,
    CryptoError,
    OpenError,
    OutOfOrderChunkError,
    SignatureError,
    StreamError,
    TamperedChunkError,
    TruncatedStreamError,
)
from cocoon.core.crypto.keys import DEFAULT_SUITE, HpkeSuite, WorkerKeys, WorkerPublicKeys
from cocoon.core.crypto.receipts import (
    RECEIPT_DOMAIN,
    SignedReceipt,
    UsageReceipt,
    receipt_message,
    sign_receipt,
    verify_receipt,
)
from cocoon.core.crypto.request import (
    RESPONSE_KEY_LEN,
    SealedRequest,
    open_request,
    request_info,
    seal_request,
)
from cocoon.core.crypto.stream import ResponseOpener, ResponseSealer, StreamChunk, StreamCipher

__all__ = [
    "DEFAULT_SUITE",
    "RECEIPT_DOMAIN",
    "RESPONSE_KEY_LEN",
    "CanonicalError",
    "CryptoError",
    "HpkeSuite",
    "OpenError",
    "OutOfOrderChunkError",
    "ResponseOpener",
    "ResponseSealer",
    "SealedRequest",
    "SignatureError",
    "SignedReceipt",
    "StreamChunk",
    "StreamCipher",
    "StreamError",
    "TamperedChunkError",
    "TruncatedStreamError",
    "UsageReceipt",
    "WorkerKeys",
    "WorkerPublicKeys",
    "canonical_bytes",
    "load_ed25519_public",
    "open_request",
    "receipt_message",
    "request_info",
    "seal_request",
    "sign_canonical",
    "sign_receipt",
    "signed_message",
    "verify_canonical",
    "verify_receipt",
]
