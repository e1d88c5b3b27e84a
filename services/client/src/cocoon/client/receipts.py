"""The worker-signed usage receipts the client received, kept as JSON lines.

`cocoon client receipts` lists them; `cocoon client audit` compares them with the account's
charges. File: `COCOON_CLIENT_RECEIPTS`, else `<config dir>/receipts.jsonl`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from cocoon.client.config import config_dir


def default_receipts_path() -> Path:
    override = os.environ.get("COCOON_CLIENT_RECEIPTS")
    return Path(override) if override else config_dir() / "receipts.jsonl"


class ReceiptStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_receipts_path()
        self._lock = threading.Lock()

    def add(self, receipt: dict[str, Any], *, gateway: str) -> None:
        line = json.dumps(
            {**receipt, "gateway": gateway, "stored_at": int(time.time() * 1000)},
            separators=(",", ":"),
        )
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as out:
                out.write(line + "\n")

    def all(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash
        return out
