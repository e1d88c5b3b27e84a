"""A worker as its owner sees it, read from the bus: `cocoon worker status` and `audit`.

Everything comes from topics the worker-proxy may read (schemas/topics): its verdict, its recent
heartbeats, the receipts it signed, the scheduler's standing of it (reputation), and billing's
ledger and balance records for its account `worker:<id>`. Nothing is asked of billing or the
operator. Payouts are the ledger's PAYOUT entries (billing keeps payout states in its own
store); `status --ton-api-url` and `cocoon worker audit` check them against the chain.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cocoon.core.bus.broadcast import BroadcastReader, BroadcastRecord
from cocoon.core.codec import models
from cocoon.core.codec.timestamps import epoch_millis, now_millis
from cocoon.core.contracts import Topic
from cocoon.worker_proxy.chain import ReceivedPayout

WORKER_ACCOUNT_PREFIX = "worker:"  # billing's ledger account of a worker (docs/billing.md)
HEARTBEAT_WINDOW_MS = 10_000  # heartbeats are not compacted: look at the last few seconds
PAYOUT_KINDS = (models.LedgerEntryKind.PAYOUT, models.LedgerEntryKind.PAYOUT_REVERSAL)


def worker_account(worker_id: str) -> str:
    return f"{WORKER_ACCOUNT_PREFIX}{worker_id}"


@dataclass
class WorkerView:
    worker_id: str
    verdict: dict[str, Any] | None = None
    # Every payout address its verdicts attested, oldest first: earnings go to the address
    # each was earned under, so an owner who changed address is paid at each of them.
    attested_addresses: list[str] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)  # by receipt id
    credits: dict[str, int] = field(default_factory=dict)  # nanoTON credited, by request id
    credited_at: dict[str, int] = field(default_factory=dict)  # epoch ms of the first credit
    ledger_payouts: list[tuple[int, int]] = field(default_factory=list)  # (epoch ms, nanoTON)
    balance: dict[str, Any] | None = None
    standing: dict[str, Any] | None = None  # the scheduler's latest view (scheduler.standings)

    def on_record(self, record: BroadcastRecord) -> None:
        value = record.value
        if value is None:
            return
        if record.topic == Topic.ATTESTATION_VERDICTS and record.key == self.worker_id:
            self.verdict = value
            address = value.get("payout_address")
            if address and address not in self.attested_addresses:
                self.attested_addresses.append(address)
        elif record.topic == Topic.WORKER_HEARTBEATS and value["worker_id"] == self.worker_id:
            self.heartbeats.append(value)
        elif record.topic == Topic.USAGE_RECEIPTS and value["worker_id"] == self.worker_id:
            self.receipts[value["receipt_id"]] = value
        elif record.topic == Topic.SCHEDULER_STANDINGS and record.key == self.worker_id:
            self.standing = value
        elif record.topic == Topic.BILLING_BALANCES and record.key == self.account:
            self.balance = value
        elif record.topic == Topic.BILLING_LEDGER and record.key == self.account:
            self._on_ledger(value)

    def _on_ledger(self, entry: dict[str, Any]) -> None:
        delta = entry["available_delta_nanoton"]
        request_id = entry["request_id"]
        if entry["kind"] == models.LedgerEntryKind.WORKER_CREDIT and request_id:
            self.credits[request_id] = self.credits.get(request_id, 0) + delta
            self.credited_at.setdefault(request_id, epoch_millis(entry["created_at"]))
        elif entry["kind"] in PAYOUT_KINDS:  # a debit of the account; a reversal credits it
            self.ledger_payouts.append((epoch_millis(entry["created_at"]), -delta))

    @property
    def paid_from_ledger(self) -> int:
        return sum(amount for _, amount in self.ledger_payouts)

    @property
    def account(self) -> str:
        return worker_account(self.worker_id)

    def summary(
        self, now_ms: int | None = None, on_chain: list[ReceivedPayout] | None = None
    ) -> dict[str, Any]:
        """The status as plain JSON-ready values; `on_chain` (the payouts found at the worker's
        addresses, when a TON API was given) adds what the chain confirms."""
        now_ms = now_millis() if now_ms is None else now_ms
        verdict = self.verdict or {}
        standing = self.standing or {}
        last_beat = self.heartbeats[-1] if self.heartbeats else None
        receipts = list(self.receipts.values())
        return {
            "worker_id": self.worker_id,
            "verdict": verdict.get("status"),
            "reason": verdict.get("reason"),
            "expires_at": _iso(verdict.get("expires_at")),
            "tcb_status": verdict.get("tcb_status"),
            "payout_address": verdict.get("payout_address"),
            "models": list(verdict.get("models") or []),
            "state": last_beat["state"] if last_beat else None,
            "heartbeats_last_10s": len(self.heartbeats),
            "last_heartbeat_s_ago": (
                round((now_ms - epoch_millis(last_beat["sent_at"])) / 1000, 1)
                if last_beat
                else None
            ),
            "load": (
                f"{last_beat['active_requests']}/{last_beat['max_active_requests']}"
                if last_beat
                else None
            ),
            "coefficient": last_beat["coefficient"] if last_beat else None,
            "requests_served": len(receipts),
            "requests_completed": sum(1 for r in receipts if r["completed"]),
            "prompt_tokens": sum(r["prompt_tokens"] for r in receipts),
            "completion_tokens": sum(r["completion_tokens"] for r in receipts),
            "earned_nanoton": sum(self.credits.values()),
            "paid_nanoton": self.paid_from_ledger,
            "pending_nanoton": self.balance["available_nanoton"] if self.balance else 0,
            # What placement divides a worker's score by; 1.0 is a spotless record.
            "reputation": standing.get("reputation"),
            "recent_failures": standing.get("failures"),
            "cooldown_penalty": standing.get("cooldown_penalty"),
            "receipts_rejected": standing.get("receipts_rejected"),
            "typical_request_s": standing.get("typical_seconds"),
            "payout_addresses": list(self.attested_addresses),
            "confirmed_on_chain_nanoton": (
                None if on_chain is None else sum(p.amount_nanoton for p in on_chain)
            ),
            "payouts_on_chain": None if on_chain is None else len(on_chain),
        }


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return None if value is None else str(value)


async def read_worker_view(
    bootstrap: str, worker_id: str, timeout_s: float = 30.0, *, prefix: str | None = None
) -> WorkerView:
    """Everything the bus holds about one worker, read once from the beginning (topics under
    `prefix`, default COCOON_TOPIC_PREFIX)."""
    view = WorkerView(worker_id)
    history = BroadcastReader(
        bootstrap,
        [
            Topic.ATTESTATION_VERDICTS,
            Topic.USAGE_RECEIPTS,
            Topic.BILLING_BALANCES,
            Topic.BILLING_LEDGER,
            Topic.SCHEDULER_STANDINGS,
        ],
        view.on_record,
        from_beginning=True,
        prefix=prefix,
        client_id=f"worker-status-{worker_id}",
    )
    beats = BroadcastReader(
        bootstrap,
        [Topic.WORKER_HEARTBEATS],
        view.on_record,
        from_beginning=False,
        since_ms=now_millis() - HEARTBEAT_WINDOW_MS,
        prefix=prefix,
        client_id=f"worker-status-{worker_id}-beats",
    )
    for reader in (history, beats):
        await reader.start()
    try:
        await asyncio.gather(history.catch_up(timeout_s), beats.catch_up(timeout_s))
    finally:
        for reader in (history, beats):
            await reader.stop()
    return view
