"""Test workers' attested keys: sign heartbeats and outcomes as each worker-proxy does.

A test that stands in for the attestation service puts `keyring.signing_key(worker_id)` in the
worker's verdict and sends `keyring.sign(record)`; a forger is simply a record signed by another
keyring (or not signed at all).
"""

from __future__ import annotations

from typing import TypeVar

from cocoon.core.codec import models
from cocoon.core.crypto.keys import WorkerKeys
from cocoon.core.worker_records import needs_signature, sign_record

Record = TypeVar("Record", models.Heartbeat, models.Outcome)


class WorkerKeyring:
    def __init__(self) -> None:
        self._keys: dict[str, WorkerKeys] = {}

    def keys(self, worker_id: str) -> WorkerKeys:
        if worker_id not in self._keys:
            self._keys[worker_id] = WorkerKeys.generate()
        return self._keys[worker_id]

    def signing_key(self, worker_id: str) -> bytes:
        return self.keys(worker_id).public.signing_key

    def sign(self, record: Record) -> Record:
        """`record` signed by its worker's key (a scheduler-reported outcome stays unsigned)."""
        if not needs_signature(record):
            return record
        return sign_record(self.keys(record.worker_id), record)
