"""Replay protection for the attestation service: challenges bound to workers, seen claims.

Freshness (docs/attestation.md, "The service"):

* first attestation: claims carry a timestamp, accepted within the policy's bound
  (`max_age_seconds` back, `max_skew_seconds` ahead). The REPORTDATA of every accepted timestamp
  evidence is remembered until that bound has passed, so the same claims cannot be presented
  twice (the bound then rejects them anyway);
* re-attestation: each TRUSTED verdict carries a `challenge` nonce issued to that worker, valid
  until the verdict expires and usable once. A nonce issued to another worker, already used or
  never issued is refused.

Both kinds of state are rebuilt from the compacted verdicts topic on start (`restore`).
"""

from __future__ import annotations

import secrets
import threading

from cocoon.attestation.freshness import NonceBook


class ChallengeBook(NonceBook):
    """A NonceBook (the Verifier checks and consumes from it) whose nonces belong to workers."""

    def __init__(self) -> None:
        super().__init__(ttl_seconds=0)  # unused: every challenge has its verdict's expiry
        self._owner: dict[bytes, str] = {}  # nonce -> worker it was issued to

    def issue_for(self, worker_id: str, expires_at: int) -> bytes:
        """A fresh challenge for `worker_id`, usable once until `expires_at` (unix seconds)."""
        nonce = secrets.token_bytes(32)
        self.restore(worker_id, nonce, expires_at)
        return nonce

    def restore(self, worker_id: str, nonce: bytes, expires_at: int) -> None:
        with self._lock:
            self._issued[bytes(nonce)] = expires_at
            self._owner[bytes(nonce)] = worker_id

    def consume(self, nonce: bytes) -> bool:
        with self._lock:
            self._owner.pop(bytes(nonce), None)
        return super().consume(nonce)

    def withdraw(self, worker_id: str) -> None:
        """Forget a worker's outstanding challenges (its verdict was revoked)."""
        with self._lock:
            mine = [n for n, w in self._owner.items() if w == worker_id]
        for nonce in mine:
            self.consume(nonce)

    def owner_problem(self, worker_id: str, nonce: bytes) -> str | None:
        """Refuse a nonce issued to another worker (expiry and use are the Verifier's checks)."""
        with self._lock:
            owner = self._owner.get(bytes(nonce))
        if owner is not None and owner != worker_id:
            return "replay: the nonce was issued to another worker"
        return None


class SeenClaims:
    """REPORTDATA of accepted timestamp evidence, kept while the freshness bound could pass it."""

    def __init__(self) -> None:
        self._seen: dict[bytes, tuple[int, str]] = {}  # REPORTDATA -> (forget after, evidence)
        self._lock = threading.Lock()

    def seen(self, report_data: bytes, at: int) -> str | None:
        """The evidence id that already presented these claims, if still remembered."""
        with self._lock:
            for rd in [rd for rd, (until, _) in self._seen.items() if until < at]:
                del self._seen[rd]
            hit = self._seen.get(bytes(report_data))
        return hit[1] if hit else None

    def remember(self, report_data: bytes, until: int, evidence_id: str) -> None:
        with self._lock:
            self._seen[bytes(report_data)] = (until, evidence_id)
