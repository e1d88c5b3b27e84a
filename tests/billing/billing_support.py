"""Test helpers: real Ed25519 worker keys signing real receipts, and a ready engine."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cocoon.billing.engine import BillingEngine
from cocoon.billing.pricing import Prices, Usage
from cocoon.billing.receipts import Ed25519ReceiptVerifier, Receipt, receipt_fields


def receipt_message(receipt: Receipt) -> bytes:
    """The signed bytes in these tests (the wiring uses cocoon.core.crypto's canonical form)."""
    fields = {
        k: (v.hex() if isinstance(v, bytes) else v) for k, v in receipt_fields(receipt).items()
    }
    return b"usage-receipt\0" + json.dumps(fields, sort_keys=True).encode()


class Workers:
    """Worker keys and the 'current verdict' key table billing checks against."""

    def __init__(self) -> None:
        self.private: dict[str, Ed25519PrivateKey] = {}
        self.current: dict[str, bytes] = {}

    def add(self, worker_id: str) -> bytes:
        key = Ed25519PrivateKey.generate()
        self.private[worker_id] = key
        pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.current[worker_id] = pub
        return pub

    def verifier(self) -> Ed25519ReceiptVerifier:
        return Ed25519ReceiptVerifier(self.current.get, receipt_message)

    def receipt(
        self,
        request_id: str,
        worker_id: str,
        usage: Usage,
        *,
        coefficient: int = 1000,
        attempt: int = 1,
        signer: str | None = None,
        model: str = "m",
        finished_at_ms: int = 2,
    ) -> Receipt:
        key = self.private[signer or worker_id]
        pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        unsigned = Receipt(
            receipt_id=f"{request_id}:{attempt}",
            request_id=request_id,
            attempt=attempt,
            worker_id=worker_id,
            model=model,
            usage=usage,
            coefficient=coefficient,
            completed=True,
            signing_key=pub,
            signature=b"",
            started_at_ms=1,
            finished_at_ms=finished_at_ms,
        )
        sig = key.sign(receipt_message(unsigned))
        return Receipt(**{**{f: getattr(unsigned, f) for f in Receipt.__slots__}, "signature": sig})


PRICES = Prices(price_per_token=20, worker_fee_per_token=15)


def engine_with(workers: Workers, prices: Prices = PRICES, sink=None) -> BillingEngine:
    return BillingEngine(prices, workers.verifier(), sink=sink)
