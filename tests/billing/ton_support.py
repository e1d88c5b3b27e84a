"""Helpers for tests against the pytvm-backed TON node double."""

from __future__ import annotations

import os

from tonsdk.contract.wallet import WalletV4ContractR2

from cocoon.billing.ton.address import friendly
from cocoon.billing.ton.wallet import Order, PayoutWallet

TON = 1_000_000_000


class UserWallet:
    """A client's own v4r2 wallet, driven through tonsdk's plain create_transfer_message."""

    def __init__(self, node, balance: int = 100 * TON) -> None:
        seed = os.urandom(32)
        self.payout_wallet = PayoutWallet(seed)  # only for its key derivation
        pub = self.payout_wallet.public_key
        self.contract = WalletV4ContractR2(public_key=pub, private_key=seed + pub, wc=0)
        self.address = self.contract.address.to_string(False)
        self.seqno = 0
        self.node = node
        node.fund(self.address, balance)

    def transfer_boc(self, dest: str, amount: int, payload=None, *, bounceable=False) -> bytes:
        to = friendly(dest, bounceable=bounceable)
        msg = self.contract.create_transfer_message(to, amount, self.seqno, payload)
        return bytes(msg["message"].to_boc(False))

    def send(self, dest: str, amount: int, payload=None, *, bounceable=False) -> None:
        self.node.send_boc(self.transfer_boc(dest, amount, payload, bounceable=bounceable))
        self.seqno += 1
        self.node.produce_block()


def deployed_wallet(node, balance: int, *, testnet: bool = False) -> PayoutWallet:
    """A funded v4r2 wallet whose contract is deployed (so bounceable transfers land)."""
    wallet = PayoutWallet(os.urandom(32), testnet=testnet)
    node.fund(wallet.address, balance)
    node.send_boc(wallet.sign(0, [Order(wallet.address, 1, "deploy")], node.now() + 60).boc)
    return wallet
