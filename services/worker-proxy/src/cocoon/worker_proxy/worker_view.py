"""A worker as its owner sees it: `cocoon worker status` and `audit`.

From the bus, through the `cocoon-worker-owner` principal (docs/security.md), which reads no
account's ledger: the worker's verdicts (and the payout addresses they attested), its recent
heartbeats, the scheduler's standing of it (reputation) and its earnings (`billing.earnings`:
each fee credited, each payout sent or taken back). From the owner's disk: the receipts the
worker signed (the worker-proxy's `receipts_file`). Nothing is asked of billing or the
operator; `status --ton-api-url` and `cocoon worker audit` check the payouts against the chain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cocoon.core.bus.broadcast import BroadcastReader, BroadcastRecord
from cocoon.core.codec import models
from cocoon.core.codec.timestamps import epoch_millis, now_millis
from cocoon.core.contracts import Topic
from cocoon.worker_proxy.chain import ReceivedPayout

HEARTBEAT_WINDOW_MS = 10_000  # heartbeats are not compacted: look at the last few seconds
PAYOUT_KINDS = (models.EarningKind.PAYOUT, models.EarningKind.PAYOUT_REVERSAL)


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
    payouts: list[tuple[int, int]] = field(default_factory=list)  # (epoch ms, nanoTON paid)
    standing: dict[str, Any] | None = None  # the scheduler's latest view (scheduler.standings)
    _earnings_seen: set[str] = field(default_factory=set)  # entry ids, each counted once

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
        elif record.topic == Topic.BILLING_EARNINGS and value["worker_id"] == self.worker_id:
            self._on_earning(value)
        elif record.topic == Topic.SCHEDULER_STANDINGS and record.key == self.worker_id:
            self.standing = value

    def add_receipts(self, receipts: Iterable[dict[str, Any]]) -> None:
        """The receipts this worker signed (its own copy, `receipts_log`)."""
        for receipt in receipts:
            if receipt["worker_id"] == self.worker_id:
                self.receipts[receipt["receipt_id"]] = receipt

    def _on_earning(self, earning: dict[str, Any]) -> None:
        if earning["entry_id"] in self._earnings_seen:
            return
        self._earnings_seen.add(earning["entry_id"])
        amount = earning["amount_nanoton"]
        request_id = earning["request_id"]
        if earning["kind"] == models.EarningKind.CREDIT and request_id:
            self.credits[request_id] = self.credits.get(request_id, 0) + amount
            self.credited_at.setdefault(request_id, epoch_millis(earning["created_at"]))
        elif earning["kind"] in PAYOUT_KINDS:  # a payout is negative; a reversal gives it back
            self.payouts.append((epoch_millis(earning["created_at"]), -amount))

    @property
    def earned(self) -> int:
        return sum(self.credits.values())

    @property
    def paid(self) -> int:
        return sum(amount for _, amount in self.payouts)

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
            "requests_credited": len(self.credits),
            "earned_nanoton": self.earned,
            "paid_nanoton": self.paid,
            "pending_nanoton": self.earned - self.paid,
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
    bootstrap: str,
    worker_id: str,
    receipts: Iterable[dict[str, Any]] = (),
    timeout_s: float = 30.0,
    *,
    prefix: str | None = None,
) -> WorkerView:
    """Everything the bus holds about one worker, read once from the beginning (topics under
    `prefix`, default COCOON_TOPIC_PREFIX), with the receipts it kept."""
    view = WorkerView(worker_id)
    view.add_receipts(receipts)
    history = BroadcastReader(
        bootstrap,
        [Topic.ATTESTATION_VERDICTS, Topic.BILLING_EARNINGS, Topic.SCHEDULER_STANDINGS],
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
