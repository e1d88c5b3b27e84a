"""Which workers the gateway will seal prompts to: those with a verdict signed by the pinned key."""

from __future__ import annotations

from pathlib import Path

from cocoon.core.verdicts import VerdictError, load_pinned_key, verify_verdict
from cocoon.gateway.workers import TrustedWorker, VerdictCheck


class NoPinnedKey(ValueError):
    pass


def verdict_checker(key_hex: str, key_file: Path | None) -> VerdictCheck:
    """A check that accepts only unexpired TRUSTED verdicts signed by the attestation key."""
    if key_hex:
        pinned = load_pinned_key(key_hex)
    elif key_file is not None:
        pinned = load_pinned_key(key_file)
    else:
        raise NoPinnedKey(
            "the gateway needs the attestation service's public key: set "
            "COCOON_ATTESTATION_PUBLIC_KEY (hex) or COCOON_ATTESTATION_PUBLIC_KEY_FILE"
        )

    def check(verdict: dict, now_ms: int) -> TrustedWorker:
        try:
            verified = verify_verdict(verdict, pinned, now_ms / 1000)
        except VerdictError as exc:
            raise ValueError(f"{exc.code}: {exc}") from None
        if not verified.trusted:
            raise ValueError(f"{verified.status}: {verified.reason}")
        if verified.hpke_public_key is None or verified.hpke_suite is None:
            raise ValueError("verdict carries no HPKE key")
        return TrustedWorker(
            worker_id=verified.worker_id,
            models=verified.models,
            hpke_public_key=verified.hpke_public_key,
            hpke_suite=verified.hpke_suite,
            signing_key=verified.signing_key or b"",
            expires_at_ms=int(verified.expires_at * 1000),
            verdict_id=verified.verdict_id,
        )

    return check
