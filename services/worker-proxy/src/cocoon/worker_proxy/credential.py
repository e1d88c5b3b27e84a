"""This worker's own Kafka credential, opened from `attestation.credentials` (no I/O).

The host starts the worker-proxy with the enrolment principal only. After a TRUSTED verdict the
attestation service publishes the worker's own SCRAM user with its password HPKE-sealed to the
key this process attested; only this process can open it. A record for another key (an earlier
process with the same worker id) is not ours; a tombstone means trust was withdrawn and the
credential deleted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from cocoon.core.bus.security import KafkaSecurity
from cocoon.core.crypto import WorkerKeys
from cocoon.core.crypto.credential import SealedSecret, open_password
from cocoon.core.crypto.errors import OpenError
from cocoon.core.crypto.keys import HpkeSuite

log = logging.getLogger(__name__)


@dataclass
class CredentialBox:
    worker_id: str
    keys: WorkerKeys
    enrolment: KafkaSecurity  # the host's settings: TLS trust and where SASL goes
    current: KafkaSecurity | None = None
    verdict_id: str | None = field(default=None, repr=False)

    def on_record(self, key: str | None, value: dict[str, Any] | None) -> bool:
        """Take a record of attestation.credentials; True when `current` changed."""
        if key != self.worker_id:
            return False
        if value is None:  # withdrawn
            changed = self.current is not None
            self.current = self.verdict_id = None
            return changed
        if bytes(value["signing_key"]) != self.keys.public.signing_key:
            return False  # issued to another process's key
        if value["verdict_id"] == self.verdict_id:
            return False  # read again (a rebalance, a restart of the reader)
        sealed = SealedSecret(
            HpkeSuite(value["hpke_suite"]),
            bytes(value["hpke_enc"]),
            bytes(value["sealed_password"]),
        )
        try:
            password = open_password(self.keys, self.worker_id, value["username"], sealed)
        except (OpenError, ValueError) as exc:
            log.warning("credential for this worker does not open: %s", exc)
            return False
        self.current = KafkaSecurity(
            "SASL_SSL",
            self.enrolment.cafile,
            username=value["username"],
            password=password,
        )
        self.verdict_id = value["verdict_id"]
        return True
