"""The worker opens only its own credential: sealed to its key, for its id and user (real HPKE)."""

from __future__ import annotations

from pathlib import Path

from cocoon.core.bus.security import KafkaSecurity
from cocoon.core.crypto import DEFAULT_SUITE, HpkeSuite, WorkerKeys
from cocoon.core.crypto.credential import seal_password
from cocoon.core.crypto.keys import SingleHpkeKey
from cocoon.worker_proxy.credential import CredentialBox

USER = "cocoon-worker.w-a"
# The enrolment settings only lend the CA path; no connection is made here.
ENROLMENT = KafkaSecurity(
    "SASL_SSL", Path(__file__), username="cocoon-worker-enrolment", password="x"
)


def record(
    keys: WorkerKeys,
    password: str,
    *,
    worker_id: str = "w-a",
    user: str = USER,
    verdict_id: str = "vd-1",
    suite: HpkeSuite = DEFAULT_SUITE,
) -> dict:
    raw = keys.public.hpke_x25519 if suite is HpkeSuite.X25519 else keys.public.hpke_mlkem768_x25519
    sealed = seal_password(
        SingleHpkeKey(suite, raw), worker_id, user, keys.public.signing_key, password
    )
    return {
        "worker_id": worker_id,
        "username": user,
        "verdict_id": verdict_id,
        "signing_key": keys.public.signing_key,
        "hpke_suite": sealed.suite.value,
        "hpke_enc": sealed.enc,
        "sealed_password": sealed.ciphertext,
    }


def test_its_own_credential_opens_and_a_tombstone_withdraws_it() -> None:
    keys = WorkerKeys.generate()
    box = CredentialBox("w-a", keys, ENROLMENT)
    assert box.on_record("w-a", record(keys, "s3cret"))
    assert box.current is not None
    assert (box.current.username, box.current.password) == (USER, "s3cret")
    assert box.current.protocol == "SASL_SSL" and box.current.cafile == ENROLMENT.cafile
    assert not box.on_record("w-a", record(keys, "s3cret"))  # read again: no change
    assert box.on_record("w-a", record(keys, "rotated", verdict_id="vd-2", suite=HpkeSuite.X25519))
    assert box.current.password == "rotated"
    assert box.on_record("w-a", None) and box.current is None
    assert not box.on_record("w-a", None)


def test_another_workers_or_processs_credential_does_not_open() -> None:
    mine, other = WorkerKeys.generate(), WorkerKeys.generate()
    box = CredentialBox("w-a", mine, ENROLMENT)
    assert not box.on_record("w-b", record(other, "p", worker_id="w-b"))  # another worker
    assert not box.on_record("w-a", record(other, "p"))  # an earlier process's key
    # Sealed to another key but claiming ours: does not open.
    forged = {**record(other, "p"), "signing_key": mine.public.signing_key}
    assert not box.on_record("w-a", forged)
    # Sealed to us for another user name: the HPKE info binds it, so it does not open either.
    renamed = {**record(mine, "p"), "username": "cocoon-worker.w-b"}
    assert not box.on_record("w-a", renamed)
    assert box.current is None
