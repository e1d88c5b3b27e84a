"""`cocoon worker audit`: was the worker paid for every receipt it signed?

Three sources, compared: the receipts the worker-proxy kept (receipts_log), billing's record of
the worker's earnings (`billing.earnings`, read by worker_view), and the payouts that reached
the attested address on chain (chain).
Two findings matter to an owner:

* a receipt never credited: a signed receipt with tokens and no WORKER_CREDIT for its request,
  once billing has had `grace_ms` to process it;
* credit never paid: earnings credited longer than `delay_ms` ago that the chain has not paid,
  although together they reach the payout threshold; and payouts billing records as sent
  that never arrived.

Payouts are matched by amount, oldest credit first (billing pays whole balances, not single
requests). A payout address shared by several workers makes the chain side look richer than
this worker's share: the audit then under-reports, never invents, a missing payout.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from cocoon.worker_proxy.chain import ReceivedPayout
from cocoon.worker_proxy.worker_view import WorkerView


@dataclass(frozen=True)
class Finding:
    kind: str  # receipt_not_credited | credit_not_paid | payout_not_on_chain
    detail: str
    amount_nanoton: int | None = None
    request_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _billable(receipt: dict[str, Any]) -> bool:
    return receipt["prompt_tokens"] + receipt["completion_tokens"] > 0


def audit(
    receipts: Iterable[dict[str, Any]],
    view: WorkerView,
    received: list[ReceivedPayout],
    *,
    now_ms: int,
    threshold_nanoton: int,
    delay_ms: int,
    grace_ms: int = 60_000,
) -> list[Finding]:
    findings = [
        Finding(
            "receipt_not_credited",
            f"receipt {r['receipt_id']} ({r['prompt_tokens']} prompt + "
            f"{r['completion_tokens']} completion tokens) has no credit in billing's earnings",
            request_id=r["request_id"],
        )
        for r in receipts
        if _billable(r)
        and r["request_id"] not in view.credits
        and r["finished_at"] + grace_ms < now_ms
    ]
    on_chain = sum(p.amount_nanoton for p in received)
    # Oldest credits are paid first; what the chain has not covered is still owed.
    owed, covered = [], on_chain
    for request_id in sorted(view.credits, key=lambda rid: view.credited_at[rid]):
        amount = view.credits[request_id]
        if covered >= amount:
            covered -= amount
        else:
            owed.append((view.credited_at[request_id], amount - covered))
            covered = 0
    unpaid = sum(amount for _, amount in owed)
    if owed and unpaid >= threshold_nanoton and owed[0][0] + delay_ms < now_ms:
        findings.append(
            Finding(
                "credit_not_paid",
                f"{unpaid:,} nanoTON credited (the oldest {(now_ms - owed[0][0]) // 1000}s ago) "
                f"has not arrived on chain, above the payout threshold of {threshold_nanoton:,}",
                amount_nanoton=unpaid,
            )
        )
    # A payout just sent may not be on chain yet: only those older than the delay count.
    settled = sum(amount for at, amount in view.payouts if at + delay_ms < now_ms)
    if settled > on_chain:
        findings.append(
            Finding(
                "payout_not_on_chain",
                f"billing records {settled:,} nanoTON paid out; "
                f"{on_chain:,} arrived at the address ({settled - on_chain:,} missing)",
                amount_nanoton=settled - on_chain,
            )
        )
    return findings
