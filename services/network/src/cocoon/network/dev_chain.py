"""`cocoon up --ton`: the development network's TON chain, and billing's settings to use it.

The chain is TON's own transaction emulator behind a toncenter v2 API on 127.0.0.1
(`cocoon.network.ton_chain`). Billing's payout wallet gets play TON at genesis and deploys
itself with its first payout, so workers are paid on chain within seconds of crossing the
(low) development threshold. Nothing here talks to a real TON network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cocoon.billing.money import NANO_PER_TON

if TYPE_CHECKING:  # the emulator and the wallet load native code: only for `cocoon up --ton`
    from cocoon.network.ton_chain import TonNode

DEFAULT_TON_PORT = 8091
PAYOUT_WALLET_NANOTON = 1_000 * NANO_PER_TON  # play TON the payout wallet starts with
# A few requests' earnings at `cocoon up`'s prices (80 nanoTON per token to the worker), so a
# development worker sees its payout on chain after a short chat, not after 10 TON.
DEV_PAYOUT_THRESHOLD_NANOTON = 10_000
BLOCK_SECONDS = 1.0


@dataclass
class DevChain:
    node: TonNode
    payout_wallet: str  # the address billing pays from
    deposit_address: str  # where clients would top up
    billing_env: dict[str, str]  # COCOON_TON_* for billing

    @property
    def api_url(self) -> str:
        return self.node.url

    def stop(self) -> None:
        self.node.stop()


def start_dev_chain(
    state: Path,
    *,
    port: int = DEFAULT_TON_PORT,
    payout_threshold: int = DEV_PAYOUT_THRESHOLD_NANOTON,
) -> DevChain:
    """Start the chain, fund a fresh payout wallet and return billing's settings for it."""
    from cocoon.billing.ton.wallet import PayoutWallet
    from cocoon.network.ton_chain import TonNode

    node = TonNode(block_interval=BLOCK_SECONDS, port=port)
    node.start()
    try:
        state.mkdir(parents=True, exist_ok=True)
        seed = os.urandom(32)
        secret = state / "payout-wallet.hex"
        secret.touch(mode=0o600)
        secret.write_text(seed.hex())
        wallet = PayoutWallet(seed, testnet=True)
        node.fund(wallet.address, PAYOUT_WALLET_NANOTON)
        # The operator's deposit wallet: nobody here holds its key; it only needs an address.
        deposit = PayoutWallet(os.urandom(32), testnet=True).address
    except BaseException:
        node.stop()
        raise
    env = {
        "COCOON_TON_NETWORK": "testnet",
        "COCOON_TON_API_URL": node.url,
        "COCOON_TON_DEPOSIT_ADDRESS": deposit,
        "COCOON_TON_WALLET_SECRET_FILE": str(secret),
        "COCOON_TON_CONFIRMATIONS": "1",
        "COCOON_TON_PAYOUT_THRESHOLD": str(payout_threshold),
        "COCOON_TON_POLL_SECONDS": "1",
    }
    return DevChain(node, wallet.address, deposit, env)
