"""One run of the payout service as its own process, from persisted state only.

    python payout_process.py NODE_URL WORKDIR SEED_HEX DESTINATIONS_JSON CRASH_AT WALLET

CRASH_AT is "signed" (SIGKILL right after the signed transfer is committed, before sending),
"sent" (SIGKILL right after sending, before any confirmation) or "none"; WALLET is a
`cocoon.billing.ton.wallet.WALLETS` name.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from cocoon.billing.engine import BillingEngine
from cocoon.billing.journal import FileJournal
from cocoon.billing.pricing import Prices
from cocoon.billing.ton.api import TonApi
from cocoon.billing.ton.payouts import PayoutService, PayoutStore
from cocoon.billing.ton.wallet import payout_wallet

PRICES = Prices(price_per_token=1_000_000, worker_fee_per_token=800_000)
THRESHOLD = 500_000_000


def _die(_transfer: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def main(
    url: str, workdir: Path, seed: bytes, destinations: dict, crash_at: str, kind: str
) -> None:
    journal = FileJournal(workdir / "ledger.jsonl")
    engine = BillingEngine.replay(journal.entries(), PRICES, lambda r: False, sink=journal)
    api = TonApi(url)
    service = PayoutService(
        engine,
        api,
        payout_wallet(kind, seed),
        PayoutStore(workdir / "payouts.sqlite"),
        destinations.get,
        threshold=THRESHOLD,
        on_signed=_die if crash_at == "signed" else None,
        on_sent=_die if crash_at == "sent" else None,
    )
    report = await service.step()
    await api.aclose()
    print(json.dumps({"signed": report.signed, "confirmed": report.confirmed,
                      "expired": report.expired}))  # fmt: skip


if __name__ == "__main__":
    url, workdir, seed, destinations, crash_at, kind = sys.argv[1:7]
    asyncio.run(
        main(url, Path(workdir), bytes.fromhex(seed), json.loads(destinations), crash_at, kind)
    )
