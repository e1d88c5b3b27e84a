"""The worker-signed usage receipts the client received, kept as JSON lines, and the evidence
each worker was verified from when the request was sealed to it.

`cocoon client receipts` lists them; `cocoon client audit` verifies each one again after the
fact and compares them with the account's charges. File: `COCOON_CLIENT_RECEIPTS`, else
`<config dir>/receipts.jsonl`; the evidence beside it in `evidence/<sha256>.json`, one file
per distinct (quote, claims, collateral, registry), which receipts name by that digest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from cocoon.client.config import config_dir
from cocoon.client.verify import Evidence


def default_receipts_path() -> Path:
    override = os.environ.get("COCOON_CLIENT_RECEIPTS")
    return Path(override) if override else config_dir() / "receipts.jsonl"


def evidence_record(
    evidence: Evidence,
    model: str,
    collateral: dict[str, Any] | None,
    registry_entries: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything a worker was verified from, as JSON: enough to verify it again offline."""
    return {
        "worker_id": evidence.worker_id,
        "model": model,
        "claims": base64.b64encode(evidence.claims).decode(),
        "tdx_quote": base64.b64encode(evidence.tdx_quote).decode(),
        "collateral": collateral,
        "registry": registry_entries,
    }


def evidence_of(record: dict[str, Any]) -> Evidence:
    return Evidence(
        str(record["worker_id"]),
        base64.b64decode(record["claims"], validate=True),
        base64.b64decode(record["tdx_quote"], validate=True),
    )


def evidence_digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


class ReceiptStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_receipts_path()
        self.evidence_dir = self.path.parent / "evidence"
        self._lock = threading.Lock()

    def add(
        self,
        receipt: dict[str, Any],
        *,
        gateway: str,
        evidence: dict[str, Any] | None = None,
        sealed_at: int | None = None,
    ) -> None:
        """Keep a verified receipt; `evidence` (an `evidence_record`) is what the worker was
        verified from when the request was sealed to it at `sealed_at` (unix seconds)."""
        line: dict[str, Any] = {
            **receipt,
            "gateway": gateway,
            "stored_at": int(time.time() * 1000),
        }
        with self._lock:
            if evidence:
                line["evidence"] = self._keep_evidence(evidence)
                line["sealed_at"] = sealed_at
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as out:
                out.write(json.dumps(line, separators=(",", ":")) + "\n")

    def _keep_evidence(self, record: dict[str, Any]) -> str:
        digest = evidence_digest(record)
        path = self.evidence_dir / f"{digest}.json"
        if not path.exists():  # the common request reuses the evidence of the last one
            self.evidence_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, sort_keys=True))
            tmp.replace(path)
        return digest

    def evidence(self, digest: str) -> dict[str, Any] | None:
        """The evidence record a receipt names, or None when it is missing or unreadable."""
        try:
            return json.loads((self.evidence_dir / f"{digest}.json").read_text())
        except (OSError, ValueError):
            return None

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
