"""TON addresses parsed without tonsdk, checked against tonsdk (TON's reference form)."""

from __future__ import annotations

import base64
import os

import pytest
from tonsdk.utils import Address

from cocoon.core.ton_address import TonAddress, TonAddressError, crc16_xmodem, parse_ton_address


@pytest.mark.parametrize("workchain", [0, -1])
@pytest.mark.parametrize("bounceable", [True, False])
@pytest.mark.parametrize("testnet", [True, False])
def test_user_friendly_forms_match_tonsdk(workchain: int, bounceable: bool, testnet: bool) -> None:
    account = os.urandom(32)
    raw = f"{workchain}:{account.hex()}"
    theirs = Address(raw).to_string(True, True, bounceable, testnet)
    ours = TonAddress(workchain, account).friendly(bounceable=bounceable, testnet=testnet)
    assert ours == theirs
    parsed = parse_ton_address(theirs)
    assert (parsed.raw, parsed.bounceable, parsed.testnet_only) == (raw, bounceable, testnet)
    # The standard base64 alphabet is accepted too (wallets show either).
    standard = Address(raw).to_string(True, False, bounceable, testnet)
    assert parse_ton_address(standard).raw == raw
    assert TonAddress.from_bytes(parsed.to_bytes()) == TonAddress(workchain, account)


def _flip(text: str, at: int) -> str:
    return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "non-empty"),
        ("hello", "neither a raw"),
        ("0:1234", "neither a raw"),
        ("5:" + "ab" * 32, "unknown workchain 5"),
        ("!" * 48, "not base64"),
    ],
)
def test_malformed_addresses_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(TonAddressError, match=problem):
        parse_ton_address(text)


def test_a_typo_fails_the_checksum() -> None:
    good = TonAddress(0, os.urandom(32)).friendly()
    with pytest.raises(TonAddressError, match="checksum"):
        parse_ton_address(_flip(good, 20))


def test_an_unknown_tag_is_refused_even_with_a_good_checksum() -> None:

    body = bytes([0x22, 0]) + os.urandom(32)
    text = base64.urlsafe_b64encode(body + crc16_xmodem(body).to_bytes(2, "big")).decode()
    with pytest.raises(TonAddressError, match="unknown tag"):
        parse_ton_address(text)


def test_an_unknown_workchain_in_the_friendly_form_is_refused() -> None:

    body = bytes([0x51, 7]) + os.urandom(32)
    text = base64.urlsafe_b64encode(body + crc16_xmodem(body).to_bytes(2, "big")).decode()
    with pytest.raises(TonAddressError, match="workchain 7"):
        parse_ton_address(text)
