"""The billing service's TON side: deposits in, worker payouts out, on the service's own engine.

Runs beside the consume loop (same process, same event loop, same `BillingEngine`): every
engine call is synchronous, so a deposit credit or a payout move lands between two records,
and its ledger entries go out in the service's next Kafka transaction like any other.

Crash safety is that of the parts (`ton.deposits`, `ton.payouts`):
* a deposit is credited once per (lt, hash) entry id; after a crash that lost the transaction,
  the watcher resumes from the committed ledger and credits it again, once;
* a payout is written to the SQLite store, and its ledger move (earnings -> payouts:pending)
  committed to Kafka (`commit`), before its transfer is signed and sent. An instance that was
  fenced by a newer one fails at that commit and never signs, so two instances cannot pay the
  same earnings; after a crash the signed transfer is found on chain, re-sent byte for byte, or
  proven dead (`ton.payouts`). Never paid twice.

Enabled by `COCOON_TON_NETWORK` (see `ton.config` for the other variables); a development
network without it has no deposits and no payouts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from cocoon.billing.engine import BillingEngine
from cocoon.billing.money import BillingError
from cocoon.billing.ton.api import TonApi
from cocoon.billing.ton.config import TonSettings
from cocoon.billing.ton.deposits import DepositWatcher
from cocoon.billing.ton.payouts import PayoutService, PayoutStore
from cocoon.billing.ton.wallet import payout_wallet
from cocoon.core.runtime.tasks import wait_any

log = logging.getLogger(__name__)


class TonLink:
    def __init__(
        self,
        settings: TonSettings,
        engine: BillingEngine,
        payout_address: Callable[[str], str | None],
        banned: Callable[[str], bool],
        store_path: Path,
        commit: Callable[[], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.api = TonApi(settings.api_url, settings.api_key)
        store_path.parent.mkdir(parents=True, exist_ok=True)
        self.deposits = DepositWatcher(
            self.api, engine, settings.deposit_address, confirmations=settings.confirmations
        )
        self.payouts: PayoutService | None = None
        if settings.wallet_secret_file is not None:
            wallet = payout_wallet(
                settings.wallet, settings.wallet_seed(), testnet=settings.testnet
            )
            self.payouts = PayoutService(
                engine,
                self.api,
                wallet,
                PayoutStore(store_path),
                payout_address,
                threshold=settings.payout_threshold,
                banned=banned,
                before_sign=commit,
            )
        else:
            log.warning("no payout wallet (COCOON_TON_WALLET_SECRET_FILE): deposits only")

    async def step(self) -> None:
        for outcome in await self.deposits.poll():
            if outcome.credited_now:
                log.info(
                    "deposit credited" if outcome.client_id else "deposit held unclaimed",
                    extra={"deposit": outcome.deposit_id, "reason": outcome.reason},
                )
        if self.payouts is not None:
            report = await self.payouts.step()
            if report.signed or report.confirmed or report.reversed or report.skipped:
                log.info(
                    "payouts",
                    extra={
                        "signed": report.signed or "",
                        "confirmed": report.confirmed,
                        "reversed": report.reversed,
                        "skipped": report.skipped,
                    },
                )

    async def run(self, stopping: asyncio.Event, every_s: float) -> None:
        while not stopping.is_set():
            try:
                await self.step()
            except BillingError as exc:  # the node is unreachable or refused: try again later
                log.warning("TON step failed: %s", exc)
            await wait_any(stopping, timeout_s=every_s)

    async def close(self) -> None:
        await self.api.aclose()
        if self.payouts is not None:
            self.payouts.store.close()
