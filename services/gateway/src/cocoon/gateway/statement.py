"""An account's statement: the charges billing recorded for it, for `cocoon client audit`.

Read on demand from `billing.ledger` (keyed by account, kept forever), from `since_ms` on, with
no consumer group: the gateway keeps no ledger state between calls. A CHARGE record's net
effect on the client is `available_delta + held_delta` (the hold is closed, the unused part
released), so the amount charged is its negation. Billing's `memo` carries the entry it
recorded (docs/billing-service.md); the receipt id and token counts the charge was computed
from come from there, so the client can hold them against the receipts it kept.
"""

from __future__ import annotations

import json
from typing import Any

from cocoon.core.bus.broadcast import BroadcastReader, BroadcastRecord
from cocoon.core.codec import models
from cocoon.core.codec.timestamps import epoch_millis
from cocoon.core.contracts import Topic

LEDGER_TOPIC = Topic.BILLING_LEDGER
READ_TIMEOUT_S = 30.0
# Fields of billing's charge entry (memo.entry.meta) a client can check against its receipt.
MEMO_FIELDS = ("receipt_id", "worker_id", "model", "prompt_tokens", "completion_tokens")


def charge_line(value: dict[str, Any]) -> dict[str, Any]:
    """One CHARGE record of the ledger as the statement shows it."""
    line: dict[str, Any] = {
        "entry_id": value["entry_id"],
        "cause_id": value["cause_id"],
        "request_id": value["request_id"],
        "charged_nanoton": -(value["available_delta_nanoton"] + value["held_delta_nanoton"]),
        "created_at": epoch_millis(value["created_at"]),
    }
    try:
        meta = json.loads(value["memo"] or "{}")["entry"]["meta"]
    except (KeyError, TypeError, ValueError):
        meta = {}  # an entry without billing's memo: the amount and request still count
    line.update({name: meta.get(name) for name in MEMO_FIELDS})
    return line


class LedgerStatements:
    def __init__(self, bootstrap: str, *, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s

    async def charges(self, account_id: str, since_ms: int) -> list[dict[str, Any]]:
        """Every CHARGE of `account_id` recorded at or after `since_ms`, oldest first."""
        found: list[dict[str, Any]] = []

        def on_record(record: BroadcastRecord) -> None:
            value = record.value
            if (
                value is not None
                and record.key == account_id
                and value["kind"] == models.LedgerEntryKind.CHARGE
            ):
                found.append(charge_line(value))

        reader = BroadcastReader(
            self.bootstrap,
            [LEDGER_TOPIC],
            on_record,
            from_beginning=False,
            since_ms=since_ms,
            client_id="gateway-statement",
        )
        await reader.start()
        try:
            await reader.catch_up(self.timeout_s)
        finally:
            await reader.stop()
        return sorted(found, key=lambda line: line["created_at"])
