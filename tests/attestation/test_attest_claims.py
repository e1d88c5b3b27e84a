"""Canonical claims encoding: fixed layout, unambiguous, bound to REPORTDATA."""

from __future__ import annotations

import hashlib

import pytest

from cocoon.attestation.claims import MAGIC, Claims, ClaimsError, Freshness


def _fixed(**kw) -> Claims:
    base = {
        "signing_key": bytes(range(32)),
        "hpke_x25519": bytes(range(32, 64)),
        "hpke_mlkem768_x25519": bytes(i % 251 for i in range(1216)),
        "model": "qwen3-0.6b",
        "freshness": Freshness(timestamp=1_700_000_000),
    }
    base.update(kw)
    return Claims(**base)


def test_layout_is_documented_length_prefixed_form() -> None:
    c = _fixed()
    enc = c.encode()
    assert enc.startswith(MAGIC)
    expected = (
        MAGIC
        + b"\x01\x00\x00\x00\x20" + bytes(range(32))
        + b"\x02\x00\x00\x00\x20" + bytes(range(32, 64))
        + b"\x03\x00\x00\x04\xc0" + bytes(i % 251 for i in range(1216))
        + b"\x04\x00\x00\x00\x0a" + b"qwen3-0.6b"
        + b"\x05\x00\x00\x00\x09" + b"\x02" + (1_700_000_000).to_bytes(8, "big")
    )  # fmt: skip
    assert enc == expected
    assert c.report_data() == hashlib.sha512(expected).digest()
    assert len(c.report_data()) == 64


def test_roundtrips() -> None:
    for fresh in (Freshness(timestamp=5), Freshness(nonce=b"n" * 32)):
        c = _fixed(freshness=fresh, model="mödel")
        assert Claims.decode(c.encode()) == c
        assert Claims.from_dict(c.to_dict()) == c


def test_every_field_changes_report_data() -> None:
    base = _fixed().report_data()
    variants = [
        _fixed(signing_key=bytes(32)),
        _fixed(hpke_x25519=bytes(32)),
        _fixed(hpke_mlkem768_x25519=bytes(1216)),
        _fixed(model="qwen3-0.6c"),
        _fixed(freshness=Freshness(timestamp=1_700_000_001)),
        _fixed(freshness=Freshness(nonce=bytes(16))),
    ]
    digests = {v.report_data() for v in variants}
    assert base not in digests and len(digests) == len(variants)


@pytest.mark.parametrize(
    "kw",
    [
        {"signing_key": bytes(31)},
        {"hpke_x25519": bytes(33)},
        {"hpke_mlkem768_x25519": bytes(1184)},
        {"model": ""},
        {"model": "x" * 257},
    ],
)
def test_invalid_claims(kw: dict) -> None:
    with pytest.raises(ClaimsError):
        _fixed(**kw)


def test_freshness_needs_exactly_one() -> None:
    with pytest.raises(ClaimsError):
        Freshness()
    with pytest.raises(ClaimsError):
        Freshness(nonce=bytes(16), timestamp=1)
    with pytest.raises(ClaimsError):
        Freshness(nonce=bytes(8))


def test_decode_rejects_tampering() -> None:
    enc = _fixed().encode()
    for bad in (
        enc[:-1],
        enc + b"\0",
        b"x" + enc[1:],
        enc.replace(b"\x04\x00\x00\x00\x0a", b"\x04\x00\x00\x00\x0b"),
    ):
        with pytest.raises(ClaimsError):
            Claims.decode(bad)
    with pytest.raises(ClaimsError):
        Claims.from_dict({"model": "x"})
