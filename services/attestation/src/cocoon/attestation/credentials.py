"""Each trusted worker's own Kafka credential: issued on a TRUSTED verdict, deleted with trust.

A worker's host holds only the enrolment principal (write evidence, read verdicts and sealed
credentials). When a verdict trusts a worker's key, the attestation service creates the SCRAM
user `cocoon-worker.<id>` with a fresh random password and the ACLs `cocoon.core.acls.
worker_acls` derives (its own work topic and group, the shared topics a worker writes), and
publishes the password sealed to the key in that verdict on `attestation.credentials`. Only the
enclave can open it. A re-attestation by the same process (same key) keeps the credential; a new
process (new key) gets a new password. When the worker's current verdict no longer trusts that
key (revoked, rejected, expired, or a verdict for another key), its ACLs and user are deleted
and the record is tombstoned.

What has been issued is the credentials topic itself (mirrored by every replica), so a restarted
service neither re-issues nor forgets a credential to delete. Replicas read the verdicts and the
credentials topics through separate mirrors, so one may see a credential before the verdict it
was issued on: only the replica that decided a worker's verdict issues, or withdraws for a
missing verdict or a changed key; every replica withdraws what a verdict it has read no longer
backs (revoked, rejected, expired), which is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cocoon.core.acls import worker_acls, worker_principal
from cocoon.core.bus.principals import apply_acls, delete_principal, ensure_users
from cocoon.core.bus.security import KafkaSecurity
from cocoon.core.codec import models
from cocoon.core.crypto.credential import seal_password
from cocoon.core.crypto.keys import HpkeSuite, SingleHpkeKey
from cocoon.core.verdicts import TRUSTED

log = logging.getLogger(__name__)

PASSWORD_BYTES = 32  # 256 bits of randomness, URL-safe text (SCRAM takes any string)


@dataclass(frozen=True)
class Issued:
    username: str
    signing_key: bytes  # the attested process it was sealed for


def still_trusted(verdict: Any, signing_key: bytes, now_s: float) -> bool:
    """Whether `verdict` (a worker's current one, or None) trusts the key a credential is for."""
    return (
        verdict is not None
        and verdict.status == TRUSTED
        and verdict.signing_key == signing_key
        and verdict.expires_at.timestamp() > now_s
    )


class CredentialIssuer:
    """Creates and deletes workers' users and ACLs on the broker (as this service's principal,
    which has Alter on the cluster for it) and builds the records that announce them."""

    def __init__(self, bootstrap: str, prefix: str, security: KafkaSecurity) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.security = security  # the service's own principal
        self.issued: dict[str, Issued] = {}  # worker -> its live credential

    def restore(self, worker_id: str | None, record: Any) -> None:
        """Follow the credentials topic (this replica's records and others')."""
        if worker_id is None:
            return
        if record is None:
            self.issued.pop(worker_id, None)
        else:
            self.issued[worker_id] = Issued(record.username, bytes(record.signing_key))

    def to_issue(self, trusted: Mapping[str, Any], now_s: float) -> list[Any]:
        """TRUSTED verdicts whose key holds no credential yet."""
        return [
            verdict
            for worker, verdict in trusted.items()
            if verdict.signing_key
            and verdict.hpke_public_key
            and still_trusted(verdict, verdict.signing_key, now_s)
            and self._issued_key(worker) != verdict.signing_key
        ]

    def _issued_key(self, worker: str) -> bytes | None:
        issued = self.issued.get(worker)
        return issued.signing_key if issued else None

    def to_withdraw(
        self, trusted: Mapping[str, Any], now_s: float, decided: Collection[str] | None = None
    ) -> list[str]:
        """Workers holding a credential their current verdict no longer backs. For a worker in
        `decided` (None: every worker, once both topics are read to their end) a missing
        verdict or a TRUSTED verdict for another key counts too; for the others only a verdict
        that is not TRUSTED or has expired does (this replica may be behind)."""
        withdrawn = []
        for worker, issued in self.issued.items():
            verdict = trusted.get(worker)
            if still_trusted(verdict, issued.signing_key, now_s):
                continue
            if decided is None or worker in decided:
                withdrawn.append(worker)  # this replica holds the worker's current verdict
            elif verdict is not None and not still_trusted(verdict, verdict.signing_key, now_s):
                withdrawn.append(worker)  # revoked, rejected or expired, whatever the key
        return withdrawn

    async def issue(self, verdict: Any, now_s: float) -> models.WorkerCredential:
        """Create (or rotate) the worker's user, grant its ACLs, seal the password to it."""
        worker = verdict.worker_id
        username = worker_principal(worker)
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        await asyncio.to_thread(
            ensure_users, self.bootstrap, {username: password}, security=self.security
        )
        acls = {username: worker_acls(worker, prefix=self.prefix)}
        await asyncio.to_thread(apply_acls, self.bootstrap, acls, security=self.security)
        key = SingleHpkeKey(HpkeSuite(verdict.hpke_suite), verdict.hpke_public_key)
        sealed = seal_password(key, worker, username, verdict.signing_key, password)
        self.issued[worker] = Issued(username, verdict.signing_key)
        log.info("credential issued", extra={"worker_id": worker, "username": username})
        return models.WorkerCredential(
            worker_id=worker,
            username=username,
            verdict_id=verdict.verdict_id,
            signing_key=verdict.signing_key,
            hpke_suite=sealed.suite.value,
            hpke_enc=sealed.enc,
            sealed_password=sealed.ciphertext,
            issued_at=datetime.fromtimestamp(now_s, UTC),
        )

    async def withdraw(self, worker: str) -> None:
        """Delete the worker's ACLs (its open connections are refused from the next request on)
        and its user (no new connection authenticates)."""
        issued = self.issued.get(worker)
        username = issued.username if issued else worker_principal(worker)
        deleted = await asyncio.to_thread(
            delete_principal, self.bootstrap, username, security=self.security
        )
        self.issued.pop(worker, None)  # only once deleted: a failure is tried again
        log.info(
            "credential withdrawn",
            extra={"worker_id": worker, "username": username, "acls_deleted": deleted},
        )
