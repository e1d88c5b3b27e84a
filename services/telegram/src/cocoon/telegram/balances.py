"""Account balances, mirrored from the compacted `billing.balances` topic into memory."""

from __future__ import annotations

from cocoon.core.bus.broadcast import BroadcastRecord
from cocoon.core.contracts import Topic

BALANCES_TOPIC = Topic.BILLING_BALANCES


class Balances:
    def __init__(self, account_prefix: str) -> None:
        self.account_prefix = account_prefix
        self._available: dict[str, tuple[int, int]] = {}

    def on_record(self, record: BroadcastRecord) -> None:
        if record.key is None or not record.key.startswith(self.account_prefix):
            return  # only the bot's own users
        if record.value is None:
            self._available.pop(record.key, None)
            return
        value = record.value
        self._available[record.key] = (value["available_nanoton"], value["held_nanoton"])

    def of(self, account_id: str) -> tuple[int, int] | None:
        """(available, held) in nanoTON, or None before billing has published the account."""
        return self._available.get(account_id)
