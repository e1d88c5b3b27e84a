"""When to attest again: the worker's own verdicts decide the next evidence (no I/O).

The attestation service answers each Evidence with a Verdict (key worker_id) that expires in
hours and may carry a single-use `challenge` nonce for the next claims. The worker re-submits
at the earlier of `refresh_s` after its last submission and halfway to the expiry of the verdict
on that submission, so it is re-verified well before the verdict lapses. Verdicts about other
keys (an earlier process with the same worker id) or older evidence do not move the schedule.
The worker reads its verdict without checking the attestation signature: a forged one could at
most make it attest early; the gateway, scheduler and billing are the ones that verify.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cocoon.core.codec.timestamps import epoch_millis


@dataclass
class AttestationSchedule:
    worker_id: str
    signing_key: bytes
    refresh_s: float
    last_evidence_id: str | None = None
    last_submitted_ms: int = 0
    status: str | None = None  # of the verdict on the last evidence
    reason: str | None = None
    expires_at_ms: int | None = None
    issued_at_ms: int | None = None
    challenge: bytes | None = None
    # Until when this key holds a TRUSTED verdict; kept across re-submissions, so a worker stays
    # READY while its next evidence is being verified.
    trusted_until_ms: int = 0

    def trusted(self, now_ms: int) -> bool:
        return now_ms < self.trusted_until_ms

    def submitted(self, evidence_id: str, at_ms: int) -> None:
        self.last_evidence_id = evidence_id
        self.last_submitted_ms = at_ms
        self.status = self.reason = self.expires_at_ms = self.issued_at_ms = None
        self.challenge = None  # a challenge is single-use

    def on_verdict(self, key: str | None, value: dict[str, Any] | None) -> bool:
        """Take a record from attestation.verdicts; True if it is about our latest evidence."""
        if value is None or (key or value.get("worker_id")) != self.worker_id:
            return False
        if value.get("signing_key") != self.signing_key:
            return False
        if value.get("evidence_id") not in (None, self.last_evidence_id):
            return False
        self.status = str(value.get("status"))
        self.reason = value.get("reason")
        self.issued_at_ms = epoch_millis(value["issued_at"])
        self.expires_at_ms = epoch_millis(value["expires_at"])
        challenge = value.get("challenge")
        self.challenge = bytes(challenge) if challenge else None
        if self.status == "TRUSTED":
            self.trusted_until_ms = max(self.trusted_until_ms, self.expires_at_ms)
        elif self.status in ("REVOKED", "REJECTED", "EXPIRED"):
            self.trusted_until_ms = 0
        return True

    def next_due_ms(self) -> int:
        due = self.last_submitted_ms + int(self.refresh_s * 1000)
        if self.status == "TRUSTED" and self.expires_at_ms is not None:
            issued = self.issued_at_ms if self.issued_at_ms is not None else self.last_submitted_ms
            due = min(due, issued + (self.expires_at_ms - issued) // 2)
        elif self.status in ("REVOKED", "EXPIRED"):
            due = self.last_submitted_ms  # no longer trusted: attest again now
        return due
