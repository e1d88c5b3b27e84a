"""Wallet v4r2 transfers built and signed with tonsdk.

`tonsdk`'s `create_transfer_message` sends one message and fixes valid_until to the wall clock +
60 s. Payouts need up to four messages per external message (the v4r2 limit COCOON also uses)
and a valid_until they choose and remember: after a crash, "the message can no longer land" is
decided from that expiry and the wallet's seqno. So the signing message is laid out here exactly
as tonsdk's `WalletV4ContractBase.create_signing_message` does (wallet_id, valid_until, seqno,
op 0), each order is built with tonsdk's own message helpers, and tonsdk's
`create_external_message` signs it and builds the state init at seqno 0; the external message
cell itself is assembled here (see `_external_message`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from tonsdk.boc import Cell
from tonsdk.contract import Contract
from tonsdk.contract.wallet import SendModeEnum, WalletV4ContractR2
from tonsdk.utils import Address

from cocoon.billing.money import BillingError, check_amount
from cocoon.billing.ton.address import friendly, parse_address

MAX_ORDERS = 4  # wallet v4r2 carries at most 4 actions per external message
PAYOUT_MODE = SendModeEnum.ignore_errors | SendModeEnum.pay_gas_separately


@dataclass(frozen=True, slots=True)
class Order:
    destination: str  # raw address
    amount: int
    comment: str


@dataclass(frozen=True, slots=True)
class SignedTransfer:
    boc: bytes
    message_hash: str  # hex of the external message cell hash: how we find it on chain
    seqno: int
    valid_until: int


class PayoutWallet:
    def __init__(self, seed: bytes, *, testnet: bool = False, workchain: int = 0) -> None:
        if len(seed) != 32:
            raise BillingError("wallet seed must be 32 bytes")
        public = (
            Ed25519PrivateKey.from_private_bytes(seed)
            .public_key()
            .public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        # tonsdk signs with NaCl's 64-byte secret key layout (seed || public key).
        self._contract = WalletV4ContractR2(
            public_key=public, private_key=seed + public, wc=workchain
        )
        self.testnet = testnet
        self.public_key = public

    @property
    def address(self) -> str:
        return self._contract.address.to_string(False)

    def sign(self, seqno: int, orders: list[Order], valid_until: int) -> SignedTransfer:
        if not orders or len(orders) > MAX_ORDERS:
            raise BillingError(f"a transfer carries 1 to {MAX_ORDERS} orders, got {len(orders)}")
        if seqno < 0 or seqno >= 2**32 or valid_until <= 0 or valid_until >= 2**32:
            raise BillingError("seqno and valid_until must be u32")
        signing = Cell()
        signing.bits.write_uint(self._contract.options["wallet_id"], 32)
        signing.bits.write_uint(valid_until, 32)
        signing.bits.write_uint(seqno, 32)
        signing.bits.write_uint(0, 8)  # op 0: simple send
        for order in orders:
            check_amount(order.amount, "payout amount", allow_zero=False)
            # Non-bounceable: a worker's fresh (undeployed) wallet keeps the funds.
            dest = Address(friendly(parse_address(order.destination), testnet=self.testnet))
            header = Contract.create_internal_message_header(dest, order.amount)
            signing.bits.write_uint8(PAYOUT_MODE)
            signing.refs.append(Contract.create_common_msg_info(header, None, _comment(order)))
        parts = self._contract.create_external_message(signing, seqno)
        header = Contract.create_external_message_header(self._contract.address)
        message = _external_message(header, parts["state_init"], parts["body"])
        return SignedTransfer(
            boc=bytes(message.to_boc(False)),
            message_hash=bytes(message.bytes_hash()).hex(),
            seqno=seqno,
            valid_until=valid_until,
        )


def _external_message(header: Cell, state_init: Cell | None, body: Cell) -> Cell:
    """The external message, as tonsdk's `create_common_msg_info` lays it out, except that it
    also counts references: tonsdk inlines the state init (2 refs: code, data) and the body
    (1 ref per order) whenever the *bits* fit, so a first transfer (seqno 0, deploying the
    wallet) with 3 or 4 orders became a cell with 5-6 refs, which no node can deserialize."""
    message = Cell()
    message.write_cell(header)
    if state_init is None:
        message.bits.write_bit(0)
    else:
        message.bits.write_bit(1)  # Maybe StateInit: present
        message.bits.write_bit(1)  # Either StateInit ^StateInit: by reference
        message.refs.append(state_init)
    inline = (
        message.bits.get_free_bits() - 1 >= body.bits.get_used_bits()
        and len(message.refs) + len(body.refs) <= 4
    )
    if inline:
        message.bits.write_bit(0)
        message.write_cell(body)
    else:
        message.bits.write_bit(1)
        message.refs.append(body)
    return message


def _comment(order: Order) -> Cell:
    body = Cell()
    body.bits.write_uint(0, 32)
    text = order.comment.encode()
    if len(text) > 123:  # one cell: 1023 bits minus the 32-bit op
        text = hashlib.sha256(text).hexdigest()[:64].encode()
    body.bits.write_bytes(text)
    return body
