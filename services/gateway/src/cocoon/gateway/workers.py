"""The gateway's view of the worker pool: verified verdicts and fresh heartbeats.

The gateway seals every prompt to a key it takes from a verdict whose attestation-service
signature it checked itself, never to a key a worker or the scheduler merely claims; and it
believes a heartbeat or an outcome only when that verdict's key signed it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cocoon.core.bus.broadcast import BroadcastRecord
from cocoon.core.capabilities import ENDPOINT_CAPABILITY, announced
from cocoon.core.codec.timestamps import now_millis
from cocoon.core.contracts import ErrorCode, Topic
from cocoon.core.worker_records import ForgedRecord, verify_value

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrustedWorker:
    worker_id: str
    models: tuple[str, ...]
    hpke_public_key: bytes
    hpke_suite: str
    signing_key: bytes
    expires_at_ms: int
    verdict_id: str


@dataclass(frozen=True)
class Announced:
    """What a worker's latest vouched heartbeat says about its engine (all of it signed)."""

    capabilities: frozenset[str]  # cocoon.core.capabilities
    context_length: int | None
    coefficient: int  # its price coefficient, 1000 = 1.0x


# (verdict value dict, now in ms) -> TrustedWorker, or raises ValueError with the reason.
VerdictCheck = Callable[[dict, int], TrustedWorker]


class WorkerDirectory:
    def __init__(self, check: VerdictCheck, heartbeat_stale_s: float = 10.0) -> None:
        self._check = check
        self._stale_ms = int(heartbeat_stale_s * 1000)
        self._workers: dict[str, TrustedWorker] = {}
        self._heartbeat_ms: dict[str, int] = {}
        self._models_ever_seen: set[str] = set()
        self._announced: dict[str, Announced] = {}  # worker id -> its latest heartbeat's word
        # model -> every capability a worker serving it announced: routing refuses an endpoint
        # none of them serves, also while those workers are away (that is not a busy network).
        self._model_capabilities: dict[str, set[str]] = {}
        self.rejected: dict[str, str] = {}
        self.refused: dict[ErrorCode, int] = {}  # worker records refused, by reason

    def on_record(self, record: BroadcastRecord) -> None:
        if record.topic == Topic.ATTESTATION_VERDICTS:
            self._on_verdict(record)
        elif (
            record.topic == Topic.WORKER_HEARTBEATS
            and record.value is not None
            and self.vouched(record)
        ):
            self._on_heartbeat(record.value)

    def _on_heartbeat(self, beat: dict) -> None:
        worker_id = beat["worker_id"]
        self._heartbeat_ms[worker_id] = now_millis()
        capabilities = announced(beat.get("capabilities"))
        self._announced[worker_id] = Announced(
            capabilities, beat.get("context_length"), beat["coefficient"]
        )
        for model in beat.get("models") or ():
            self._model_capabilities.setdefault(model, set()).update(capabilities)

    def vouched(self, record: BroadcastRecord) -> bool:
        """Did the worker a heartbeat or outcome names sign it with its attested key?

        A refused record is logged and dropped: the gateway reads these topics without a group
        (every instance reads everything), so the scheduler and billing, which read them once,
        write the dead letters."""
        assert record.value is not None and record.record is not None
        try:
            verify_value(record.record, record.value, self.signing_key)
        except ForgedRecord as exc:
            log.warning("refused %s record: %s", record.topic, exc)
            self.refused[exc.code] = self.refused.get(exc.code, 0) + 1
            return False
        return True

    def signing_key(self, worker_id: str) -> bytes | None:
        worker = self.trusted(worker_id)
        return worker.signing_key if worker is not None else None

    def _on_verdict(self, record: BroadcastRecord) -> None:
        worker_id = record.key or (record.value or {}).get("worker_id")
        if worker_id is None:
            return
        if record.value is None:  # tombstone: the registry withdrew this worker
            self._workers.pop(worker_id, None)
            return
        try:
            worker = self._check(record.value, now_millis())
        except ValueError as exc:
            self._workers.pop(worker_id, None)
            self.rejected[worker_id] = str(exc)
            return
        self._workers[worker_id] = worker
        self._models_ever_seen.update(worker.models)

    def trusted(self, worker_id: str, now_ms: int | None = None) -> TrustedWorker | None:
        worker = self._workers.get(worker_id)
        now_ms = now_millis() if now_ms is None else now_ms
        if worker is None or worker.expires_at_ms <= now_ms:
            return None
        return worker

    def live_workers(self, model: str | None = None) -> list[TrustedWorker]:
        now_ms = now_millis()
        return [
            worker
            for worker in self._workers.values()
            if worker.expires_at_ms > now_ms
            and now_ms - self._heartbeat_ms.get(worker.worker_id, 0) <= self._stale_ms
            and (model is None or model in worker.models)
        ]

    def announced(self, worker_id: str) -> Announced | None:
        return self._announced.get(worker_id)

    def model_capabilities(self, model: str) -> frozenset[str]:
        """What the workers serving `model` announced; empty until one has."""
        return frozenset(self._model_capabilities.get(model, ()))

    def models_serving(self, endpoint: str) -> list[str]:
        """Models whose workers announced the capability `endpoint` needs, sorted."""
        needed = ENDPOINT_CAPABILITY[endpoint]
        return sorted(m for m, caps in self._model_capabilities.items() if needed in caps)

    def knows_model(self, model: str) -> bool:
        """Has any attested worker ever served `model`? (Unknown models fail fast with 404.)"""
        return model in self._models_ever_seen
