"""The worker's own copy of every receipt it signs: an append-only JSON-lines file.

`cocoon worker audit` compares it with what billing credited and what the chain paid; it is
the owner's evidence, so it is written before the receipt is sent (a receipt on the bus is
always in the file) and never rewritten. Each line is the signed UsageReceipt record with bytes
in hex, plus the payout address the receipt was earned under.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cocoon.core.crypto.receipts import SignedReceipt


class ReceiptLog:
    def __init__(self, path: Path, payout_address: str | None) -> None:
        self.path = path
        self.payout_address = payout_address
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, receipt: SignedReceipt) -> None:
        line = {
            key: value.hex() if isinstance(value, bytes) else value
            for key, value in receipt.to_record().items()
        }
        line["payout_address"] = self.payout_address
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")


def read_receipts(path: Path) -> Iterator[dict[str, Any]]:
    """Every receipt in the file, in the order signed; a torn last line (a crash mid-write) is
    skipped, anything else unreadable is an error."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, text in enumerate(lines, 1):
        try:
            yield json.loads(text)
        except json.JSONDecodeError:
            if number == len(lines):
                return
            raise ValueError(f"{path}:{number}: not a receipt line") from None
