"""Which TON network, which API endpoint, which keys: from the environment, never from the repo.

COCOON_TON_NETWORK              mainnet | testnet (required; no default to pay real TON by
                                mistake)
COCOON_TON_API_URL              toncenter v2 compatible base URL, e.g. .../api/v2
COCOON_TON_API_KEY              optional API key (sent as X-API-Key)
    Each of these two may instead be given as a file (COCOON_TON_API_URL_FILE,
    COCOON_TON_API_KEY_FILE): a mounted secret, which is how the Helm chart passes them.
COCOON_TON_WALLET_SECRET_FILE   file holding the payout wallet's 32-byte Ed25519 seed in hex
                                (a mounted Kubernetes secret)
COCOON_TON_DEPOSIT_ADDRESS      the deposit wallet's address
COCOON_TON_CONFIRMATIONS        masterchain blocks to wait before crediting (default 3)
COCOON_TON_PAYOUT_THRESHOLD     nanoTON a worker must have earned to be paid (default 10 TON,
                                as COCOON)
COCOON_TON_WALLET               v4r2 (default; 4 transfers per message) or highload-v2 (80)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cocoon.billing.money import NANO_PER_TON, BillingError, check_amount
from cocoon.billing.ton.address import parse_address
from cocoon.billing.ton.wallet import WALLETS

NETWORKS = ("mainnet", "testnet")


@dataclass(frozen=True)
class TonSettings:
    network: str
    api_url: str
    deposit_address: str
    wallet_secret_file: Path | None = None
    api_key: str | None = field(default=None, repr=False)
    confirmations: int = 3
    payout_threshold: int = 10 * NANO_PER_TON
    wallet: str = "v4r2"

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise BillingError(f"TON network must be one of {NETWORKS}, got {self.network!r}")
        if not self.api_url.startswith(("http://", "https://")):
            raise BillingError(f"TON API URL must be http(s), got {self.api_url!r}")
        object.__setattr__(self, "deposit_address", parse_address(self.deposit_address))
        if self.confirmations < 0:
            raise BillingError("confirmations must not be negative")
        check_amount(self.payout_threshold, "payout threshold", allow_zero=False)
        if self.wallet not in WALLETS:
            raise BillingError(f"TON wallet must be one of {sorted(WALLETS)}, got {self.wallet!r}")

    @property
    def testnet(self) -> bool:
        return self.network == "testnet"

    def wallet_seed(self) -> bytes:
        if self.wallet_secret_file is None:
            raise BillingError("COCOON_TON_WALLET_SECRET_FILE is not set: payouts need a wallet")
        text = Path(self.wallet_secret_file).read_text().strip()
        try:
            seed = bytes.fromhex(text)
        except ValueError:
            raise BillingError("wallet secret file must hold a hex seed") from None
        if len(seed) != 32:
            raise BillingError("wallet secret must be a 32-byte Ed25519 seed")
        return seed

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TonSettings:
        env = os.environ if env is None else env
        api_url = _value_or_file(env, "COCOON_TON_API_URL")
        missing = [
            name
            for name, value in (
                ("COCOON_TON_NETWORK", env.get("COCOON_TON_NETWORK")),
                ("COCOON_TON_API_URL (or _FILE)", api_url),
                ("COCOON_TON_DEPOSIT_ADDRESS", env.get("COCOON_TON_DEPOSIT_ADDRESS")),
            )
            if not value
        ]
        if missing:
            raise BillingError(f"missing TON settings: {', '.join(missing)}")
        secret = env.get("COCOON_TON_WALLET_SECRET_FILE")
        return cls(
            network=env["COCOON_TON_NETWORK"],
            api_url=str(api_url),
            deposit_address=env["COCOON_TON_DEPOSIT_ADDRESS"],
            wallet_secret_file=Path(secret) if secret else None,
            api_key=_value_or_file(env, "COCOON_TON_API_KEY"),
            confirmations=int(env.get("COCOON_TON_CONFIRMATIONS", "3")),
            payout_threshold=int(env.get("COCOON_TON_PAYOUT_THRESHOLD", str(10 * NANO_PER_TON))),
            wallet=env.get("COCOON_TON_WALLET", "v4r2"),
        )


def _value_or_file(env: Mapping[str, str], name: str) -> str | None:
    """`name`'s value, or the stripped contents of the file `name`_FILE points at; None if
    neither is set. Both set is refused: which one wins would be a guess."""
    value, path = env.get(name) or None, env.get(f"{name}_FILE") or None
    if value is not None and path is not None:
        raise BillingError(f"set {name} or {name}_FILE, not both")
    if path is None:
        return value
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise BillingError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
