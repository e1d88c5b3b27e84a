"""What billing does with each consumed record and each timer tick, without Kafka.

`Processor` drives the domain engine and collects what one batch must publish: the new ledger
entries (with their sequence numbers) and the reservations. The service publishes a batch in one
Kafka transaction together with the input offsets, so either all of it happens or none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cocoon.billing.engine import BillingEngine, CaptureResult
from cocoon.billing.ledger import Entry
from cocoon.billing.money import BillingError, InsufficientFundsError, check_id
from cocoon.billing.pricing import Prices
from cocoon.billing.receipts import ReceiptVerify, receipt_from_record
from cocoon.billing.stream import BalanceBook, millis
from cocoon.core.codec import models

log = logging.getLogger(__name__)


class BadRecord(ValueError):
    """A record billing cannot act on (dead-lettered with the reason, never guessed at)."""


@dataclass
class Batch:
    """What one processed batch publishes."""

    entries: list[tuple[int, Entry]] = field(default_factory=list)
    reservations: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.entries or self.reservations)


class Processor:
    def __init__(
        self,
        prices: Prices,
        verify: ReceiptVerify,
        entries: Iterable[Entry] = (),
        *,
        hold_grace_ms: int,
        outcome_grace_ms: int,
    ) -> None:
        self.book = BalanceBook()
        self.engine = BillingEngine.replay(self._noted(entries), prices, verify, sink=self._collect)
        self.hold_grace_ms = hold_grace_ms
        self.outcome_grace_ms = outcome_grace_ms
        # Outcomes seen for requests still held: request id -> when to release (if no receipt).
        # In memory only: after a restart the hold's own expiry is the backstop.
        self.release_due: dict[str, int] = {}
        # Newest placement (`inference.assignments`) per open hold. Receipts and outcomes of an
        # older attempt neither charge nor release: the request went on to another worker.
        # Rebuilt after a restart by re-reading the assignments of the open holds.
        self.latest_attempt: dict[str, int] = {}
        self._batch = Batch()

    def _noted(self, entries: Iterable[Entry]) -> Iterable[Entry]:
        for entry in entries:
            self.book.applied(entry)
            yield entry

    def _collect(self, entry: Entry) -> None:
        # Called before the engine applies the entry: the ledger's length is its sequence number.
        self._batch.entries.append((len(self.engine.ledger), entry))
        self.book.applied(entry)

    def take(self) -> Batch:
        batch, self._batch = self._batch, Batch()
        return batch

    # ---- dev funding ------------------------------------------------------------------

    def grant(self, account_id: str, amount: int, now_ms: int) -> bool:
        """Open `account_id` and credit a dev grant once ever (deterministic entry ids)."""
        self.engine.open_account(account_id, now_ms)
        return self.engine.credit_deposit(
            f"dev-grant:{account_id}",
            amount,
            account_id,
            at_ms=now_ms,
            note="dev grant (COCOON_DEV_GRANTS)",
            source="dev_grant",
        )

    # ---- inference.requests -----------------------------------------------------------

    def on_request(self, request: models.InferenceRequest, now_ms: int) -> None:
        rid, account = request.request_id, request.account_id
        try:
            check_id(rid, "request_id")
        except BillingError as exc:
            raise BadRecord(str(exc)) from None
        engine = self.engine
        if engine.hold(rid) is None and f"hold:{rid}" in engine.ledger:
            log.info("request %s replayed after it was settled: ignored", rid)
            return
        if not _valid_id(account) or not engine.has_account(account):
            self._reserve(request, now_ms, "REJECTED", 0, reason="UNKNOWN_ACCOUNT", available=0)
            return
        try:
            hold = engine.open_hold(
                rid,
                account,
                max_tokens=request.max_tokens,
                prompt_size=request.prompt_bytes,
                max_coefficient=request.max_coefficient,
                expires_at_ms=millis(request.deadline_at) + self.hold_grace_ms,
                model=request.model,
                at_ms=now_ms,
            )
        except InsufficientFundsError as exc:
            # amount_nanoton carries what was needed: the gateway states the shortfall.
            self._reserve(
                request,
                now_ms,
                "REJECTED",
                exc.needed,
                reason="INSUFFICIENT_FUNDS",
                available=exc.available,
            )
            return
        except BillingError as exc:  # negative sizes, overflowing caps: nothing is held
            log.warning("request %s not admitted: %s", rid, exc)
            available = engine.available(account)
            self._reserve(request, now_ms, "REJECTED", 0, reason="UNKNOWN", available=available)
            return
        self._reserve(request, now_ms, "HELD", hold.amount, reason=None, available=None)

    def _reserve(
        self,
        request: models.InferenceRequest,
        now_ms: int,
        status: str,
        amount: int,
        *,
        reason: str | None,
        available: int | None,
    ) -> None:
        self._batch.reservations.append(
            {
                "reservation_id": f"rsv:{request.request_id}",
                "request_id": request.request_id,
                "account_id": request.account_id,
                "model": request.model,
                "status": status,
                "amount_nanoton": amount,
                "max_tokens": request.max_tokens,
                "max_coefficient": request.max_coefficient,
                "reject_reason": reason,
                "available_nanoton": available,
                "gateway_id": request.gateway_id,
                "deadline_at": millis(request.deadline_at),
                "decided_at": now_ms,
            }
        )

    # ---- usage.receipts ---------------------------------------------------------------

    def on_receipt(self, data: dict[str, Any], now_ms: int) -> CaptureResult:
        try:
            receipt = receipt_from_record(data)
        except BillingError as exc:
            raise BadRecord(str(exc)) from None
        latest = self.latest_attempt.get(receipt.request_id, 0)
        result = self.engine.capture(receipt, now_ms, latest_attempt=latest)
        if result.status != "rejected" or self.engine.hold(receipt.request_id) is None:
            self.release_due.pop(receipt.request_id, None)
        return result

    # ---- inference.outcomes -----------------------------------------------------------

    def on_outcome(self, outcome: models.Outcome, now_ms: int) -> None:
        if self.engine.hold(outcome.request_id) is None:
            return  # captured already, released, or never held
        if outcome.attempt < self.latest_attempt.get(outcome.request_id, 0):
            return  # the end of an attempt that was placed again: the hold waits for the new one
        # The receipt may be just behind the outcome (another topic): wait a little for it.
        self.release_due.setdefault(outcome.request_id, now_ms + self.outcome_grace_ms)

    # ---- inference.assignments --------------------------------------------------------

    def on_assignment(self, assignment: models.Assignment) -> None:
        """Note the request's newest attempt (idempotent: re-reading assignments is harmless)."""
        rid = assignment.request_id
        if self.engine.hold(rid) is None:
            return
        if assignment.attempt > self.latest_attempt.get(rid, 0):
            self.latest_attempt[rid] = assignment.attempt
            # An outcome of an earlier attempt must not release the hold under the new one.
            self.release_due.pop(rid, None)

    # ---- time -------------------------------------------------------------------------

    def tick(self, now_ms: int, receipts_read_to_ms: int | None = None) -> list[str]:
        """Release holds whose outcome came without a receipt, and expired holds.

        A hold expires only once every receipt sent before its expiry has been read:
        `receipts_read_to_ms` is how far in (record) time `usage.receipts` has been consumed
        (None: not known yet, so nothing expires). After downtime the backlog still holds
        receipts sent in time; expiring by the wall clock first would refuse them.
        """
        released = []
        for rid, at in list(self.release_due.items()):
            if at <= now_ms:
                del self.release_due[rid]
                if self.engine.release_hold(rid, now_ms, "outcome without receipt"):
                    released.append(rid)
        if receipts_read_to_ms is not None:
            released += self.engine.expire_holds(min(now_ms, receipts_read_to_ms), at_ms=now_ms)
        for rid in [r for r in self.latest_attempt if self.engine.hold(r) is None]:
            del self.latest_attempt[rid]
        return released


def _valid_id(value: str) -> bool:
    try:
        check_id(value, "account_id")
    except BillingError:
        return False
    return True
