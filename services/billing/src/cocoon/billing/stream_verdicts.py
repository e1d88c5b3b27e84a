"""The workers' current receipt-signing keys and attested payout addresses, mirrored from
`attestation.verdicts`.

Every verdict is checked against the pinned attestation key (`cocoon.core.verdicts`); only a
TRUSTED, correctly signed verdict gives its worker a key, and only until the verdict expires. Any
later verdict for the worker (rejected, revoked, forged, malformed) or a tombstone takes the key
away: the latest record per worker is its state, as on the compacted topic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cocoon.core.bus.broadcast import BroadcastRecord
from cocoon.core.contracts import Topic
from cocoon.core.crypto.errors import CryptoError
from cocoon.core.verdicts import VerdictError, verify_verdict

log = logging.getLogger(__name__)

VERDICTS_TOPIC = Topic.ATTESTATION_VERDICTS


class VerdictKeys:
    def __init__(self, pinned_key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._pinned = pinned_key
        self._clock = clock
        # worker id -> (Ed25519 key, expires, attested payout address or None)
        self._keys: dict[str, tuple[bytes, float, str | None]] = {}

    def on_record(self, record: BroadcastRecord) -> None:
        worker_id = record.key
        if worker_id is None:
            return
        if record.value is None:
            self._keys.pop(worker_id, None)
            return
        try:
            verdict = verify_verdict(record.value, self._pinned, self._clock())
        except (VerdictError, CryptoError, ValueError) as exc:
            self._keys.pop(worker_id, None)
            log.warning("verdict for %s not trusted: %s", worker_id, exc)
            return
        if verdict.worker_id != worker_id or not verdict.trusted or not verdict.signing_key:
            self._keys.pop(worker_id, None)
            return
        self._keys[worker_id] = (
            bytes(verdict.signing_key),
            verdict.expires_at,
            verdict.payout_address,
        )

    def current_key(self, worker_id: str) -> bytes | None:
        """The Ed25519 key of the worker's current, unexpired TRUSTED verdict."""
        found = self._keys.get(worker_id)
        if found is None or self._clock() >= found[1]:
            return None
        return found[0]

    def payout_address(self, worker_id: str) -> str | None:
        """The payout address the worker's current verdict attests (None: it attests none).

        Read at capture right after `current_key` verified the receipt, with no await between,
        so the address is that of the very verdict whose key signed the receipt."""
        found = self._keys.get(worker_id)
        if found is None or self._clock() >= found[1]:
            return None
        return found[2]

    def __len__(self) -> int:
        return len(self._keys)
