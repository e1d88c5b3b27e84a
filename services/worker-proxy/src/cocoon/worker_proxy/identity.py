"""The worker's attested identity: keys made inside the TEE and the evidence that binds them.

Keys live only in this process (a restarted worker makes new ones and attests again). The
evidence is the canonical claims (public keys, model, a timestamp as freshness, and the payout
address when the owner set one: claims v2, so billing pays only there) and a TDX quote
whose REPORTDATA is SHA-512 of those claims, obtained through the TEE interface, and, on a
confidential GPU, the GPU's report over a nonce derived from the same claims.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cocoon.core import tee
from cocoon.core.codec import models
from cocoon.core.codec.timestamps import now_millis
from cocoon.core.crypto import WorkerKeys


@dataclass(frozen=True)
class Identity:
    worker_id: str
    model: str
    keys: WorkerKeys
    payout_address: str | None = None  # TON address bound into every claims it attests
    # The GPU's evidence over gpu_nonce(claims) (gpu_nvml.collect_gpu_evidence), or no GPU part.
    gpu: Callable[[bytes], bytes] | None = None

    @classmethod
    def generate(
        cls,
        worker_id: str,
        model: str,
        payout_address: str | None = None,
        *,
        gpu: Callable[[bytes], bytes] | None = None,
    ) -> Identity:
        return cls(worker_id, model, WorkerKeys.generate(), payout_address, gpu)

    def evidence(self, *, nonce: bytes | None = None, now_ms: int | None = None) -> models.Evidence:
        """Fresh evidence: new claims, new quote, new evidence id.

        Freshness is the attestation service's challenge `nonce` when it issued one, else the
        current time (checked against the policy's max age).
        """
        now_ms = now_millis() if now_ms is None else now_ms
        public, address = self.keys.public, self.payout_address
        if nonce is not None:
            claims = tee.encode_claims(public, self.model, nonce=nonce, payout_address=address)
        else:
            claims = tee.encode_claims(
                public, self.model, timestamp=now_ms // 1000, payout_address=address
            )
        quote = tee.get_quote(tee.report_data(claims))
        return models.Evidence(
            evidence_id=f"ev-{self.worker_id}-{uuid.uuid4().hex}",
            worker_id=self.worker_id,
            claims=claims,
            tdx_quote=quote,
            gpu_evidence=self.gpu(claims) if self.gpu is not None else None,
            nonce=nonce,
            collected_at=datetime.fromtimestamp(now_ms / 1000, UTC),
        )
