"""Which workers get a credential and which lose it (no I/O: `CredentialIssuer`'s decisions).

The broker side (users, ACLs, what each credential may do) is in
tests/security/test_worker_credentials.py; here, the rules on the verdicts alone: a TRUSTED
verdict for a key without a credential issues one, the same key again issues nothing, and a
verdict that no longer backs the key (another status, another key, or expiry) withdraws it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from cocoon.attestation.credentials import CredentialIssuer, Issued
from cocoon.core.acls import worker_principal
from cocoon.core.bus.security import KafkaSecurity
from cocoon.core.codec import models
from cocoon.core.crypto import DEFAULT_SUITE, WorkerKeys

NOW = time.time()


def verdict(
    worker_id: str, keys: WorkerKeys, *, status: str = "TRUSTED", expires_in_s: float = 3600
) -> models.Verdict:
    return models.Verdict(
        verdict_id=f"vd-{worker_id}-{status}",
        worker_id=worker_id,
        status=status,  # type: ignore[arg-type]  # a symbol of the Verdict status enum
        models=["m"],
        signing_key=keys.public.signing_key,
        hpke_public_key=keys.public.hpke_mlkem768_x25519,
        hpke_suite=DEFAULT_SUITE.value,
        registry_version=1,
        issued_at=datetime.fromtimestamp(NOW, UTC),
        expires_at=datetime.fromtimestamp(NOW + expires_in_s, UTC),
        attestor_key_id="att-test",
        signature=b"\0" * 64,
    )


def issuer_holding(**issued: WorkerKeys) -> CredentialIssuer:
    issuer = CredentialIssuer("127.0.0.1:9", "", KafkaSecurity())  # decides only, no I/O
    for worker, keys in issued.items():
        issuer.issued[worker] = Issued(worker_principal(worker), keys.public.signing_key)
    return issuer


def test_a_trusted_key_without_a_credential_gets_one_and_only_once() -> None:
    a, b = WorkerKeys.generate(), WorkerKeys.generate()
    trusted = {"w-a": verdict("w-a", a), "w-b": verdict("w-b", b)}
    assert [v.worker_id for v in issuer_holding().to_issue(trusted, NOW)] == ["w-a", "w-b"]
    issuer = issuer_holding(**{"w-a": a})
    assert [v.worker_id for v in issuer.to_issue(trusted, NOW)] == ["w-b"]
    assert issuer.to_withdraw(trusted, NOW) == []


def test_a_new_process_of_the_same_worker_gets_a_new_credential() -> None:
    old, new = WorkerKeys.generate(), WorkerKeys.generate()
    issuer = issuer_holding(**{"w-a": old})
    trusted = {"w-a": verdict("w-a", new)}
    assert issuer.to_withdraw(trusted, NOW) == ["w-a"]  # the old key's user goes first
    assert [v.signing_key for v in issuer.to_issue(trusted, NOW)] == [new.public.signing_key]


def test_withdrawn_when_trust_is_revoked_rejected_expired_or_forgotten() -> None:
    keys = WorkerKeys.generate()
    issuer = issuer_holding(**{"w-a": keys})
    for status in ("REVOKED", "REJECTED", "EXPIRED"):
        assert issuer.to_withdraw({"w-a": verdict("w-a", keys, status=status)}, NOW) == ["w-a"]
    expired = {"w-a": verdict("w-a", keys, expires_in_s=-1)}
    assert issuer.to_withdraw(expired, NOW) == ["w-a"]
    assert issuer.to_issue(expired, NOW) == []
    assert issuer.to_withdraw({}, NOW) == ["w-a"]  # a tombstoned verdict


def test_the_credentials_topic_restores_what_was_issued() -> None:
    keys = WorkerKeys.generate()
    issuer = issuer_holding()
    record = models.WorkerCredential(
        worker_id="w-a",
        username=worker_principal("w-a"),
        verdict_id="vd-1",
        signing_key=keys.public.signing_key,
        hpke_suite=DEFAULT_SUITE.value,
        hpke_enc=b"e",
        sealed_password=b"c",
        issued_at=datetime.fromtimestamp(NOW, UTC),
    )
    issuer.restore("w-a", record)
    assert issuer.to_issue({"w-a": verdict("w-a", keys)}, NOW) == []
    issuer.restore("w-a", None)
    assert issuer.issued == {}


def test_a_replica_that_did_not_decide_withdraws_only_on_a_verdict_it_has_read() -> None:
    """Another replica's sweep may read a new credential before the verdict it was issued on:
    a missing verdict or a TRUSTED one for the old key is not a reason to withdraw there."""
    old, new = WorkerKeys.generate(), WorkerKeys.generate()
    issuer = issuer_holding(**{"w-a": new, "w-b": new})
    behind = {"w-a": verdict("w-a", old)}  # w-b: no verdict read yet
    assert issuer.to_withdraw(behind, NOW, decided=()) == []
    assert sorted(issuer.to_withdraw(behind, NOW, decided=None)) == ["w-a", "w-b"]
    assert issuer.to_withdraw(behind, NOW, decided={"w-b"}) == ["w-b"]
    revoked = {"w-a": verdict("w-a", new, status="REVOKED")}
    assert issuer.to_withdraw(revoked, NOW, decided=()) == ["w-a"]
    expired = {"w-a": verdict("w-a", old, expires_in_s=-1)}
    assert issuer.to_withdraw(expired, NOW, decided=()) == ["w-a"]
