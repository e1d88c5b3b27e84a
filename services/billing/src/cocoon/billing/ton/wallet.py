"""Payout wallet transfers built and signed with tonsdk: wallet v4r2, or highload wallet v2 for
large batches.

`tonsdk`'s `create_transfer_message` sends one message and fixes valid_until to the wall clock +
60 s. Payouts need up to four messages per external message (the v4r2 limit COCOON also uses)
and a valid_until they choose and remember: after a crash, "the message can no longer land" is
decided from that expiry and the wallet's seqno. So the signing message is laid out here exactly
as tonsdk's `WalletV4ContractBase.create_signing_message` does (wallet_id, valid_until, seqno,
op 0), each order is built with tonsdk's own message helpers, and tonsdk's
`create_external_message` signs it and builds the state init at seqno 0; the external message
cell itself is assembled here (see `_external_message`).

`HighloadPayoutWallet` runs tonsdk's highload wallet v2 code: up to 254 transfers in one
external message, and no seqno: the contract accepts a query id once, and only until the time in
its upper 32 bits (`valid_until << 32 | n`), so the same crash rules hold with one less check
(docs/billing.md). tonsdk's own `create_transfer_message` for it shifts by `32 + query_id` (an
operator precedence slip), so the signing message is laid out here too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from tonsdk.boc import Cell, begin_cell, begin_dict
from tonsdk.contract import Contract
from tonsdk.contract.wallet import HighloadWalletV2Contract, SendModeEnum, WalletV4ContractR2
from tonsdk.utils import Address

from cocoon.billing.money import BillingError, check_amount
from cocoon.billing.ton.address import friendly, parse_address

MAX_ORDERS = 4  # wallet v4r2 carries at most 4 actions per external message
# The contract could send 254, but tonsdk's BOC serializer writes a message of more than 255
# cells wrongly (about 85 orders here; `_signed` checks the round trip), so batches stay below.
HIGHLOAD_MAX_ORDERS = 80
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


def _public_key(seed: bytes) -> bytes:
    if len(seed) != 32:
        raise BillingError("wallet seed must be 32 bytes")
    return (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def _check_batch(orders: list[Order], most: int, number: int, valid_until: int) -> None:
    if not orders or len(orders) > most:
        raise BillingError(f"a transfer carries 1 to {most} orders, got {len(orders)}")
    if number < 0 or number >= 2**32 or valid_until <= 0 or valid_until >= 2**32:
        raise BillingError("seqno and valid_until must be u32")


def _order_message(order: Order, testnet: bool) -> Cell:
    """The internal message of one payout, as tonsdk builds it."""
    check_amount(order.amount, "payout amount", allow_zero=False)
    # Non-bounceable: a worker's fresh (undeployed) wallet keeps the funds.
    dest = Address(friendly(parse_address(order.destination), testnet=testnet))
    header = Contract.create_internal_message_header(dest, order.amount)
    return Contract.create_common_msg_info(header, None, _comment(order))


def _signed(
    contract: Contract, state_init: Cell | None, body: Cell, number: int, until: int
) -> SignedTransfer:
    header = Contract.create_external_message_header(contract.address)
    message = _external_message(header, state_init, body)
    boc = bytes(message.to_boc(False))
    try:
        intact = Cell.one_from_boc(boc).bytes_hash() == message.bytes_hash()
    except Exception:  # tonsdk raises a bare Exception on a corrupt BOC
        intact = False
    if not intact:
        raise BillingError("tonsdk serialized the transfer wrongly: too many cells in one BOC")
    return SignedTransfer(
        boc=boc,
        message_hash=bytes(message.bytes_hash()).hex(),
        seqno=number,
        valid_until=until,
    )


class _Wallet:
    """A tonsdk wallet contract of the seed's Ed25519 key."""

    contract_class: type[WalletV4ContractR2] | type[HighloadWalletV2Contract]

    def __init__(self, seed: bytes, *, testnet: bool = False, workchain: int = 0) -> None:
        public = _public_key(seed)
        # tonsdk signs with NaCl's 64-byte secret key layout (seed || public key).
        self._contract = self.contract_class(
            public_key=public, private_key=seed + public, wc=workchain
        )
        self.testnet = testnet
        self.public_key = public

    @property
    def address(self) -> str:
        return self._contract.address.to_string(False)


class PayoutWallet(_Wallet):
    """Wallet v4r2: up to four transfers per external message, replay-protected by its seqno."""

    contract_class = WalletV4ContractR2
    max_orders = MAX_ORDERS
    uses_seqno = True

    def sign(
        self, seqno: int, orders: list[Order], valid_until: int, *, deploy: bool = False
    ) -> SignedTransfer:
        """`deploy` is implied by seqno 0 (tonsdk adds the state init then)."""
        _check_batch(orders, MAX_ORDERS, seqno, valid_until)
        signing = Cell()
        signing.bits.write_uint(self._contract.options["wallet_id"], 32)
        signing.bits.write_uint(valid_until, 32)
        signing.bits.write_uint(seqno, 32)
        signing.bits.write_uint(0, 8)  # op 0: simple send
        for order in orders:
            signing.bits.write_uint8(PAYOUT_MODE)
            signing.refs.append(_order_message(order, self.testnet))
        parts = self._contract.create_external_message(signing, seqno)
        return _signed(self._contract, parts["state_init"], parts["body"], seqno, valid_until)


class HighloadPayoutWallet(_Wallet):
    """Highload wallet v2: up to 80 transfers per external message, replay-protected by a query
    id that expires (no seqno)."""

    contract_class = HighloadWalletV2Contract
    max_orders = HIGHLOAD_MAX_ORDERS
    uses_seqno = False

    def sign(
        self, number: int, orders: list[Order], valid_until: int, *, deploy: bool = False
    ) -> SignedTransfer:
        """`number` tells apart batches signed for the same second (the query id's low half);
        `deploy` adds the state init, for a wallet not active yet."""
        _check_batch(orders, HIGHLOAD_MAX_ORDERS, number, valid_until)
        transfers = begin_dict(16)
        for index, order in enumerate(orders):
            action = (
                begin_cell().store_uint8(PAYOUT_MODE).store_ref(_order_message(order, self.testnet))
            )
            transfers.store_cell(index, action.end_cell())
        signing = (
            begin_cell()
            .store_uint(self._contract.options["wallet_id"], 32)
            .store_uint(valid_until << 32 | number, 64)
            .store_maybe_ref(transfers.end_cell())
            .end_cell()
        )
        body = self._contract.create_external_message(signing)["body"]
        state_init = self._contract.create_state_init()["state_init"] if deploy else None
        return _signed(self._contract, state_init, body, number, valid_until)


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


Wallet = PayoutWallet | HighloadPayoutWallet
WALLETS: dict[str, type[PayoutWallet] | type[HighloadPayoutWallet]] = {
    "v4r2": PayoutWallet,
    "highload-v2": HighloadPayoutWallet,
}


def payout_wallet(kind: str, seed: bytes, *, testnet: bool = False) -> Wallet:
    """The payout wallet of `kind` (a `WALLETS` name). The same seed gives each kind its own
    address: switching kinds means funding the new address."""
    try:
        return WALLETS[kind](seed, testnet=testnet)
    except KeyError:
        raise BillingError(f"wallet must be one of {sorted(WALLETS)}, got {kind!r}") from None
