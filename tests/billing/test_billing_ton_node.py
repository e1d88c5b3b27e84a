"""The TON node double runs real wallet code: it must refuse what a node refuses."""

from __future__ import annotations

import base64
import os

import httpx
import pytest
from ton_support import TON, UserWallet
from tonsdk.boc import Cell
from tonsdk.contract.wallet import WalletV4ContractR2

from cocoon.billing.ton.address import AddressError, friendly, parse_address
from cocoon.billing.ton.api import TonApi, TonApiError, parse_transaction
from cocoon.billing.ton.wallet import Order, PayoutWallet
from cocoon.network.ton_chain import TonNode

DEST = "0:" + "22" * 32


@pytest.fixture
def node():
    with TonNode(block_interval=None) as n:
        yield n


async def test_wallet_contract_checks_signature_seqno_and_expiry(node):
    user = UserWallet(node)
    api = TonApi(node.url)
    try:
        assert await api.get_seqno(user.address) == 0
        # Signed by another key for this wallet's address: the contract refuses it.
        impostor_seed = os.urandom(32)
        impostor = WalletV4ContractR2(
            public_key=user.payout_wallet.public_key,
            private_key=impostor_seed + PayoutWallet(impostor_seed).public_key,
            wc=0,
        )
        forged = impostor.create_transfer_message(friendly(DEST), TON, 0)["message"]
        with pytest.raises(TonApiError, match="not accepted"):
            await api.send_boc(bytes(forged.to_boc(False)))
        user.send(DEST, 2 * TON, "hi")
        assert await api.get_seqno(user.address) == 1
        assert node.balance(DEST) == 2 * TON
        user.seqno = 0  # replay seqno 0
        with pytest.raises(TonApiError, match="not accepted"):
            await api.send_boc(user.transfer_boc(DEST, TON))
        # A transfer whose valid_until has passed is refused too.
        wallet = PayoutWallet(os.urandom(32))
        node.fund(wallet.address, 10 * TON)
        stale = wallet.sign(0, [Order(DEST, TON, "x")], valid_until=node.now() - 1)
        with pytest.raises(TonApiError, match="not accepted"):
            await api.send_boc(stale.boc)
        # Funded at genesis and never sent from: uninitialised, as billing's payout wallet is
        # before its first payout.
        fresh = await api.get_address_information(wallet.address)
        assert fresh.state == "uninitialized" and fresh.balance == 10 * TON
        info = await api.get_address_information(user.address)
        assert info.state == "active" and info.balance < 98 * TON
    finally:
        await api.aclose()


async def test_our_v4r2_builder_matches_tonsdk_create_transfer_message(node):
    seed = os.urandom(32)
    ours = PayoutWallet(seed)
    theirs = WalletV4ContractR2(public_key=ours.public_key, private_key=seed + ours.public_key)
    assert theirs.address.to_string(False) == ours.address
    msg = theirs.create_transfer_message(friendly(DEST), 12345, 7, "cocoon payout w.1")
    signing = bytes(msg["signing_message"].bits.array)
    valid_until = int.from_bytes(signing[4:8], "big")
    signed = ours.sign(7, [Order(DEST, 12345, "cocoon payout w.1")], valid_until)
    assert signed.message_hash == bytes(msg["message"].bytes_hash()).hex()


async def test_bad_requests_get_toncenter_style_errors(node):
    async with httpx.AsyncClient(base_url=node.url + "/") as http:
        bad_b64 = await http.post("sendBoc", json={"boc": "%%%"})
        assert bad_b64.status_code == 500 and not bad_b64.json()["ok"]
        junk = base64.b64encode(b"\xb5\xee\x9c\x72junk").decode()
        assert "deserialize" in (await http.post("sendBoc", json={"boc": junk})).json()["error"]
        internal = Cell()
        internal.bits.write_uint(0, 1)
        not_ext = base64.b64encode(bytes(internal.to_boc(False))).decode()
        assert not (await http.post("sendBoc", json={"boc": not_ext})).json()["ok"]
        missing = await http.get("getTransactions")
        assert missing.status_code == 422
        bad_addr = await http.get("getAddressInformation", params={"address": "EQnope"})
        assert bad_addr.status_code == 416
        assert (await http.get("noSuchMethod")).status_code == 404
        bad_lt = await http.get("getTransactions", params={"address": DEST, "lt": "abc"})
        assert bad_lt.status_code == 422
    api = TonApi(node.url)
    with pytest.raises(TonApiError, match="deserialize"):
        await api.send_boc(b"garbage")
    await api.aclose()


async def test_transient_failures_are_retried(node):
    node.fail_next_requests = 2
    api = TonApi(node.url, backoff_s=0.01)
    assert await api.get_masterchain_seqno() >= 1
    node.fail_next_requests = 10
    with pytest.raises(TonApiError, match="attempts"):
        await api.get_masterchain_seqno()
    await api.aclose()


async def test_history_pagination_returns_every_transaction_once(node):
    user = UserWallet(node)
    for i in range(7):
        user.send(DEST, TON // 10, f"n{i}")
    api = TonApi(node.url)
    page = await api.get_transactions(DEST, limit=3)
    assert len(page) == 3 and page[0].lt > page[-1].lt
    everything = await api.iter_transactions_since(DEST, 0)
    assert [t.in_msg.comment for t in everything] == [f"n{i}" for i in range(7)]
    since = await api.iter_transactions_since(DEST, everything[3].lt)
    assert [t.in_msg.comment for t in since] == ["n4", "n5", "n6"]
    await api.aclose()


def test_malformed_addresses_and_api_values_are_clear_errors():
    for bad in ["", "hello", "0:1234", "EQAREREREREREREREREREREREREREREREREREREREREREeYX", 5]:
        with pytest.raises(AddressError):
            parse_address(bad)
    assert parse_address(friendly(DEST)) == DEST
    good = {"transaction_id": {"lt": "5", "hash": base64.b64encode(bytes(32)).decode()}}
    assert parse_transaction(good).lt == 5
    for field, value in [("lt", "abc"), ("lt", "-1"), ("hash", "short")]:
        raw = {"transaction_id": {**good["transaction_id"], field: value}}
        with pytest.raises(TonApiError):
            parse_transaction(raw)
    msg = {"value": "lots", "hash": good["transaction_id"]["hash"], "source": DEST}
    with pytest.raises(TonApiError, match="not a number"):
        parse_transaction({**good, "in_msg": msg})
