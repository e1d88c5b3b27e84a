"""Verdict signing (attestation.verdicts) against the readers' check (core.verdicts)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cocoon.attestation.verdicts import ServiceKey, ServiceKeyError, rejected_record
from cocoon.core import codec
from cocoon.core.verdicts import (
    VerdictError,
    key_id,
    load_pinned_key,
    verdict_message,
    verify_verdict,
)

NOW_MS = 1_764_000_000_000


def _trusted() -> dict:
    return {
        "verdict_id": "vd-1",
        "worker_id": "w-1",
        "evidence_id": "ev-1",
        "status": "TRUSTED",
        "reason": None,
        "image_hash": b"\x11" * 32,
        "models": ["qwen3-0.6b"],
        "signing_key": b"\x22" * 32,
        "hpke_public_key": b"\x33" * 1216,
        "hpke_suite": "MLKEM768-X25519/HKDF-SHA256/ChaCha20Poly1305",
        "hpke_x25519": b"\x44" * 32,
        "tcb_status": "UpToDate",
        "registry_version": 3,
        "issued_at": NOW_MS,
        "expires_at": NOW_MS + 3_600_000,
        "report_data": b"\x55" * 64,
        "measurements": b"\x66" * 240,
        "challenge": b"\x77" * 32,
    }


def test_signature_survives_the_wire_and_covers_every_field() -> None:
    key = ServiceKey.generate()
    verdict = key.sign(_trusted())
    _, decoded = codec.decode(codec.encode(verdict))  # fastavro dict with datetimes
    checked = verify_verdict(decoded, key.public, NOW_MS / 1000)
    assert checked.trusted and checked.expires_at == NOW_MS / 1000 + 3600
    # The message is what any Ed25519 implementation checks.
    Ed25519PublicKey.from_public_bytes(key.public).verify(
        verdict.signature, verdict_message(verdict)
    )
    for field, value in [
        ("worker_id", "w-2"),
        ("status", "REJECTED"),
        ("models", ["other"]),
        ("signing_key", b"\x00" * 32),
        ("hpke_x25519", None),
        ("challenge", b"\x00" * 32),
        ("registry_version", 4),
    ]:
        with pytest.raises(VerdictError) as err:
            verify_verdict(verdict.model_copy(update={field: value}), key.public, NOW_MS / 1000)
        assert err.value.code == VerdictError.BAD_SIGNATURE, field


ADDRESS = "0:" + "5e" * 32


def test_the_payout_address_is_signed_and_can_be_neither_changed_added_nor_stripped() -> None:
    key = ServiceKey.generate()
    verdict = key.sign({**_trusted(), "payout_address": ADDRESS})
    _, decoded = codec.decode(codec.encode(verdict))
    assert verify_verdict(decoded, key.public, NOW_MS / 1000).payout_address == ADDRESS
    for value in ("0:" + "5f" * 32, None):  # redirected, or stripped to pass as a v1 verdict
        with pytest.raises(VerdictError) as err:
            verify_verdict(
                verdict.model_copy(update={"payout_address": value}), key.public, NOW_MS / 1000
            )
        assert err.value.code == VerdictError.BAD_SIGNATURE, value
    # An address added to a verdict signed without one.
    plain = key.sign(_trusted())
    assert verify_verdict(plain, key.public, NOW_MS / 1000).payout_address is None
    with pytest.raises(VerdictError) as err:
        verify_verdict(
            plain.model_copy(update={"payout_address": ADDRESS}), key.public, NOW_MS / 1000
        )
    assert err.value.code == VerdictError.BAD_SIGNATURE


def test_verdicts_without_an_address_are_signed_as_before() -> None:
    # Readers of the v1 domain still verify every verdict that carries no payout address.
    from cocoon.core.crypto.canonical import signed_message
    from cocoon.core.verdicts import SIGNED_FIELDS, VERDICT_DOMAIN, signed_fields

    verdict = ServiceKey.generate().sign(_trusted())
    fields = signed_fields(verdict)
    assert tuple(fields) == SIGNED_FIELDS
    assert verdict_message(verdict) == signed_message(VERDICT_DOMAIN, fields)


def test_expiry_applies_to_trusted_verdicts_only() -> None:
    key = ServiceKey.generate()
    trusted = key.sign(_trusted())
    with pytest.raises(VerdictError) as err:
        verify_verdict(trusted, key.public, NOW_MS / 1000 + 3600)
    assert err.value.code == VerdictError.EXPIRED and "expired" in str(err.value)
    rejected = key.sign(
        rejected_record(
            worker_id="w-1", evidence_id="ev-2", reason="nope", now_ms=NOW_MS, registry_version=3
        )
    )
    checked = verify_verdict(rejected, key.public, time.time())
    assert not checked.trusted and checked.reason == "nope"


def test_wrong_key_and_malformed_inputs() -> None:
    key, other = ServiceKey.generate(), ServiceKey.generate()
    verdict = key.sign(_trusted())
    with pytest.raises(VerdictError) as err:
        verify_verdict(verdict, other.public, NOW_MS / 1000)
    assert err.value.code == VerdictError.WRONG_KEY
    # Same key id claimed, other key's signature: the signature check still catches it.
    forged = other.sign(_trusted()).model_copy(update={"attestor_key_id": key.key_id})
    with pytest.raises(VerdictError) as err:
        verify_verdict(forged, key.public, NOW_MS / 1000)
    assert err.value.code == VerdictError.BAD_SIGNATURE
    assert verify_verdict(verdict, key.public, NOW_MS / 1000, worker_id="w-1").trusted
    with pytest.raises(VerdictError, match="record key"):
        verify_verdict(verdict, key.public, NOW_MS / 1000, worker_id="w-2")
    with pytest.raises(VerdictError) as err:
        verify_verdict(verdict, b"short", NOW_MS / 1000)
    assert err.value.code == VerdictError.MALFORMED
    with pytest.raises(VerdictError):
        verify_verdict(object(), key.public, NOW_MS / 1000)


def test_service_key_file(tmp_path: Path) -> None:
    path = tmp_path / "k" / "service-key.pem"
    with pytest.raises(ServiceKeyError):
        ServiceKey.load(path)
    key = ServiceKey.load(path, create=True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ServiceKey.load(path).public == key.public
    pub = path.with_suffix(".pub")
    assert load_pinned_key(pub) == key.public == load_pinned_key(str(pub))
    assert load_pinned_key(key.public.hex()) == key.public
    assert key.key_id == key_id(key.public) and key.key_id.startswith("att-")
    with pytest.raises(VerdictError):
        load_pinned_key("abcd")
