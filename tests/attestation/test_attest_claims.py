"""Canonical claims encoding: fixed layout, unambiguous, bound to REPORTDATA."""

from __future__ import annotations

import hashlib

import pytest

from cocoon.attestation.claims import MAGIC, MAGIC_V2, Claims, ClaimsError, Freshness

ADDRESS = "0:" + "ab" * 32
MASTERCHAIN = "-1:" + "cd" * 32


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


def test_v2_is_v1_then_the_payout_address() -> None:
    v1 = _fixed().encode()
    enc = _fixed(payout_address=ADDRESS).encode()
    assert enc == MAGIC_V2 + v1[len(MAGIC) :] + b"\x06\x00\x00\x00\x21" + b"\x00" + b"\xab" * 32
    master = _fixed(payout_address=MASTERCHAIN).encode()
    assert master.endswith(b"\x06\x00\x00\x00\x21" + b"\xff" + b"\xcd" * 32)


def test_the_payout_address_is_kept_in_raw_form_whatever_was_given() -> None:
    from cocoon.core.ton_address import parse_ton_address

    friendly = parse_ton_address(ADDRESS).friendly(bounceable=True)
    assert _fixed(payout_address=friendly).payout_address == ADDRESS
    assert _fixed(payout_address=friendly).encode() == _fixed(payout_address=ADDRESS).encode()
    with pytest.raises(ClaimsError, match="payout address"):
        _fixed(payout_address="0:1234")


def test_roundtrips() -> None:
    for fresh in (Freshness(timestamp=5), Freshness(nonce=b"n" * 32)):
        for address in (None, ADDRESS, MASTERCHAIN):
            c = _fixed(freshness=fresh, model="mödel", payout_address=address)
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
        _fixed(payout_address=ADDRESS),
        _fixed(payout_address="0:" + "ab" * 31 + "ac"),
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


def test_decode_rejects_tampered_v2() -> None:
    enc = _fixed(payout_address=ADDRESS).encode()
    v1_body = _fixed().encode()[len(MAGIC) :]
    for bad in (
        enc[:-1],  # truncated address
        enc + b"\0",
        MAGIC + enc[len(MAGIC_V2) :],  # v1 magic with a sixth field
        MAGIC_V2 + v1_body,  # v2 magic without the address
        enc[:-33] + b"\x05" + enc[-32:],  # workchain 5 does not exist
    ):
        with pytest.raises(ClaimsError):
            Claims.decode(bad)
