"""What billing does with each consumed record and each timer tick, without Kafka.

`Processor` drives the domain engine and collects what one batch must publish: the new ledger
entries (with their sequence numbers) and the reservations. The service publishes a batch in one
Kafka transaction together with the input offsets, so either all of it happens or none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cocoon.billing.engine import (
    AttestedAddress,
    BillingEngine,
    CaptureResult,
    Grant,
    Hold,
    grant_id_for,
)
from cocoon.billing.ledger import Entry
from cocoon.billing.money import (
    BillingError,
    GrantError,
    InsufficientFundsError,
    LedgerStateError,
    check_id,
)
from cocoon.billing.pricing import BPS_ONE, Prices
from cocoon.billing.receipts import Receipt, ReceiptVerify, receipt_from_record
from cocoon.billing.stream import BalanceBook
from cocoon.core.codec import models
from cocoon.core.codec.timestamps import epoch_millis
from cocoon.core.request_ids import is_co_partitioned

log = logging.getLogger(__name__)

# A placement read before its request is kept this long for the request to arrive.
ATTEMPTS_KEPT_MS = 15 * 60 * 1000


class BadRecord(ValueError):
    """A record billing cannot act on (dead-lettered with the reason, never guessed at)."""


@dataclass
class Batch:
    """What one processed batch publishes."""

    entries: list[tuple[int, Entry]] = field(default_factory=list)
    reservations: list[dict[str, Any]] = field(default_factory=list)
    grants: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.entries or self.reservations or self.grants or self.refunds)


@dataclass(frozen=True)
class GrantPolicy:
    """How big and how long-lived the admission grants billing gives gateways are."""

    usable_ms: int = 30_000
    # A grant takes at most this share of what the account has left after the asking request,
    # so the account's other gateways (and the slow path) keep funds to admit with.
    max_share_bps: int = 5_000
    max_requests: int = 1_000
    # How far the gateways' and workers' clocks may be behind billing's: a grant closes, and a
    # receipt for a request not read yet is refused, only that long after the records are read.
    clock_skew_ms: int = 2_000


class ReceiptTooEarly(Exception):
    """A receipt for a request billing has not read yet, though it may still come (a request
    admitted against a grant is placed before billing reads it): decide it later."""


class Processor:
    def __init__(
        self,
        prices: Prices,
        verify: ReceiptVerify,
        entries: Iterable[Entry] = (),
        *,
        hold_grace_ms: int,
        outcome_grace_ms: int,
        grants: GrantPolicy | None = None,
        attested_address: AttestedAddress | None = None,
        snapshot: Mapping[str, Any] | None = None,
        window_ms: int | None = None,
        partitions: int | None = None,
    ) -> None:
        """`entries` are the whole ledger, or with `snapshot` (a `state()`) those after it.

        `partitions`: the partition count request ids must be co-partitioned for with their
        account (`cocoon.core.request_ids`; the service passes the catalog's): a request whose
        id is not is refused. None: not checked (tests of the engine's logic alone).

        `window_ms` is the idempotence window: a request whose deadline, or a receipt whose
        end, is older than that is not acted on, so what the engine remembers of settled
        requests and rejected receipts is forgotten that long after (`tick`). None: never."""
        addressed = {} if attested_address is None else {"attested_address": attested_address}
        if snapshot is None:
            self.book = BalanceBook()
            self.engine = BillingEngine.replay(
                self._noted(entries),
                prices,
                verify,
                sink=self._collect,
                keep_entries=False,  # they are on billing.ledger
                **addressed,
            )
        else:
            self.book = BalanceBook.restored(snapshot["book"])
            self.engine = BillingEngine.restore(
                snapshot["engine"], self._noted(entries), prices, verify, self._collect, **addressed
            )
        self.window_ms = window_ms
        self.partitions = partitions
        self.hold_grace_ms = hold_grace_ms
        self.outcome_grace_ms = outcome_grace_ms
        # Outcomes seen for requests still held: request id -> when to release (if no receipt).
        # In memory only: after a restart the hold's own expiry is the backstop.
        self.release_due: dict[str, int] = {}
        # Newest placement (`inference.assignments`) per open hold. Receipts and outcomes of an
        # older attempt neither charge nor release: the request went on to another worker.
        # Rebuilt after a restart by re-reading the assignments of the open holds.
        self.latest_attempt: dict[str, int] = {}
        # When each latest_attempt entry was noted: a placement read before its request (a
        # granted request is placed before billing reads it) is kept a while, not forever.
        self._attempt_noted_ms: dict[str, int] = {}
        self.grant_policy = grants or GrantPolicy()
        # How far (record time) `inference.requests` has been read, as of the last tick.
        self.requests_read_to_ms: int | None = None
        self._batch = Batch()

    def _noted(self, entries: Iterable[Entry]) -> Iterable[Entry]:
        for entry in entries:
            self.book.applied(entry)
            yield entry

    def _collect(self, entry: Entry) -> None:
        # Called before the engine applies the entry: the ledger's length is its sequence number.
        self._batch.entries.append((len(self.engine.ledger), entry))
        self.book.applied(entry)

    def state(self) -> dict[str, Any]:
        """What a snapshot holds (the `snapshot` argument of a later Processor)."""
        return {"engine": self.engine.state(), "book": self.book.snapshot()}

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

    # ---- billing.topups ---------------------------------------------------------------

    def on_topup(self, topup: models.TopUp, now_ms: int) -> None:
        """Credit a Stars payment or a trial once per topup_id, or answer a refund ask on
        billing.refunds."""
        if topup.kind == models.TopUpKind.REFUND:
            self._refund(topup, now_ms)
            return
        self.engine.credit_topup(
            topup.topup_id,
            topup.account_id,
            topup.amount_nanoton,
            topup.source.lower(),
            at_ms=now_ms,
            paid_amount=topup.paid_amount,
            reference=topup.reference,
        )

    def _refund(self, ask: models.TopUp, now_ms: int) -> None:
        decision = self.engine.refund_topup(ask.topup_id, ask.account_id, now_ms)
        topup = decision.topup
        self._batch.refunds.append(
            {
                "topup_id": decision.topup_id,
                "account_id": decision.client_id,
                "status": models.RefundStatus.DEBITED
                if decision.debited
                else models.RefundStatus.REFUSED,
                "amount_nanoton": topup.amount if topup else 0,
                "paid_amount": topup.paid_amount if topup else 0,
                "reference": topup.reference if topup else "",
                "reason": decision.reason,
                "decided_at": now_ms,
            }
        )

    # ---- inference.requests -----------------------------------------------------------

    def on_request(self, request: models.InferenceRequest, now_ms: int) -> None:
        rid, account = request.request_id, request.account_id
        try:
            check_id(rid, "request_id")
        except BillingError as exc:
            raise BadRecord(str(exc)) from None
        engine = self.engine
        if engine.settled(rid):
            log.info("request %s replayed after it was settled: ignored", rid)
            return
        if self._too_old(epoch_millis(request.deadline_at), now_ms):
            # Its hold may have been settled and forgotten: holding it again could charge twice.
            log.warning("request %s is past the idempotence window: ignored", rid)
            return
        if self.partitions is not None and not is_co_partitioned(rid, account, self.partitions):
            # Its receipts would land on another account shard than its hold: the gateway
            # that minted it broke the request-id contract. Nothing is held.
            log.warning("request %s is not co-partitioned with account %s", rid, account)
            reason = models.RejectReason.REQUEST_NOT_CO_PARTITIONED
            self._reserve(request, now_ms, "REJECTED", 0, reason=reason, available=None)
            self._refuse_grant(request, now_ms)
            return
        if not _valid_id(account) or not engine.has_account(account):
            self._reserve(request, now_ms, "REJECTED", 0, reason="UNKNOWN_ACCOUNT", available=0)
            self._refuse_grant(request, now_ms)
            return
        if request.grant_return_id:
            self._return_grant(request, now_ms)
        if request.grant_id and self._hold_from_grant(request, now_ms):
            return
        try:
            hold = self._open_hold(request, now_ms)
        except LedgerStateError as exc:
            raise BadRecord(str(exc)) from None
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
            self._refuse_grant(request, now_ms)
            return
        except BillingError as exc:  # negative sizes, overflowing caps: nothing is held
            log.warning("request %s not admitted: %s", rid, exc)
            available = engine.available(account)
            self._reserve(request, now_ms, "REJECTED", 0, reason="UNKNOWN", available=available)
            self._refuse_grant(request, now_ms)
            return
        self._reserve(request, now_ms, "HELD", hold.amount, reason=None, available=None)
        self._open_grant(request, hold.amount, now_ms)

    def _open_hold(
        self, request: models.InferenceRequest, now_ms: int, grant_id: str | None = None
    ) -> Hold:
        return self.engine.open_hold(
            request.request_id,
            request.account_id,
            max_tokens=request.max_tokens,
            prompt_size=request.prompt_bytes,
            max_coefficient=request.max_coefficient,
            expires_at_ms=epoch_millis(request.deadline_at) + self.hold_grace_ms,
            model=request.model,
            at_ms=now_ms,
            grant_id=grant_id,
            requested_at_ms=epoch_millis(request.created_at),
        )

    # ---- admission grants ---------------------------------------------------------------

    def _hold_from_grant(self, request: models.InferenceRequest, now_ms: int) -> bool:
        """Carve a granted request's hold out of its grant (no reservation: the gateway admitted
        it and the scheduler placed it already). False when the grant cannot fund it: a gateway
        bug or a clock far off; the request then goes through the ordinary decision, whose
        REJECTED reservation makes the scheduler withdraw it and the gateway fail it."""
        assert request.grant_id is not None
        try:
            hold = self._open_hold(request, now_ms, grant_id=request.grant_id)
        except LedgerStateError as exc:
            raise BadRecord(str(exc)) from None
        except GrantError as exc:
            log.error("granted request %s not funded by its grant: %s", request.request_id, exc)
            return False
        except BillingError as exc:
            log.warning("granted request %s not admitted: %s", request.request_id, exc)
            return False
        self._open_grant(request, hold.amount, now_ms)
        return True

    def _open_grant(self, request: models.InferenceRequest, hold_amount: int, now_ms: int) -> None:
        """Answer the request's ask for a new grant (if any): GRANTED or REFUSED."""
        asked = min(request.grant_ask_requests, self.grant_policy.max_requests)
        if asked <= 0:
            return
        engine, policy = self.engine, self.grant_policy
        share = engine.available(request.account_id) * policy.max_share_bps // BPS_ONE
        amount = min(asked * hold_amount, share)
        if amount <= 0 or amount < hold_amount:
            self._refuse_grant(request, now_ms)
            return
        try:
            grant = engine.open_grant(
                grant_id_for(request.request_id),
                request.account_id,
                gateway_id=request.gateway_id,
                amount=amount,
                usable_until_ms=now_ms + policy.usable_ms,
                at_ms=now_ms,
            )
        except BillingError as exc:  # e.g. an id too long to derive a grant id from
            log.warning("no grant for request %s: %s", request.request_id, exc)
            self._refuse_grant(request, now_ms)
            return
        self._grant_record(request.request_id, grant, "GRANTED", grant.amount, now_ms)

    def _refuse_grant(self, request: models.InferenceRequest, now_ms: int) -> None:
        if request.grant_ask_requests <= 0:
            return
        refused = Grant(
            grant_id=grant_id_for(request.request_id),
            client_id=request.account_id,
            gateway_id=request.gateway_id,
            amount=0,
            remaining=0,
            usable_until_ms=now_ms,
            prices=self.engine.prices,
        )
        self._grant_record(request.request_id, refused, "REFUSED", 0, now_ms)

    def _return_grant(self, request: models.InferenceRequest, now_ms: int) -> None:
        """The gateway retired one of its grants: every request it funded is on this partition
        before this one, so it can be closed now."""
        assert request.grant_return_id is not None
        grant = self.engine.grant(request.grant_return_id)
        if grant is None:
            return  # closed already (expired, or a replay)
        if grant.client_id != request.account_id or grant.gateway_id != request.gateway_id:
            log.warning("request %s returns a grant that is not its own", request.request_id)
            return
        self._close_grant(grant, now_ms, "returned by the gateway")

    def _close_grant(self, grant: Grant, now_ms: int, reason: str) -> None:
        returned = self.engine.close_grant(grant.grant_id, now_ms, reason)
        if returned is not None:
            self._grant_record("", grant, "CLOSED", returned, now_ms)

    def _grant_record(
        self, asked_by: str, grant: Grant, status: str, amount: int, now_ms: int
    ) -> None:
        self._batch.grants.append(
            {
                "grant_id": grant.grant_id,
                "account_id": grant.client_id,
                "gateway_id": grant.gateway_id,
                "status": status,
                "amount_nanoton": amount,
                "price_per_token": grant.prices.price_per_token,
                "max_bps": grant.prices.max_bps,
                "asked_by": asked_by,
                "usable_until": grant.usable_until_ms,
                "decided_at": now_ms,
            }
        )

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
                "deadline_at": epoch_millis(request.deadline_at),
                "decided_at": now_ms,
                # A client-sealed request may be placed only where its key was wrapped to.
                "candidates": list(request.candidates),
            }
        )

    # ---- usage.receipts ---------------------------------------------------------------

    def on_receipt(
        self, receipt: Receipt, now_ms: int, sent_at_ms: int | None = None
    ) -> CaptureResult:
        """Capture or reject a receipt (`receipt_of` builds it from its record). With
        `sent_at_ms` (its record time), a receipt for a request not read yet raises
        ReceiptTooEarly until `inference.requests` has been read past that time (plus the clock
        skew allowance): only then is it an unknown request."""
        rid = receipt.request_id
        if self._too_old(receipt.finished_at_ms, now_ms):
            raise BadRecord(
                f"receipt for {rid} ended at {receipt.finished_at_ms}, before the idempotence "
                f"window ({self.window_ms} ms): it may have been decided and forgotten"
            )
        if sent_at_ms is not None and not self.engine.ever_held(rid):
            read_to = self.requests_read_to_ms
            if read_to is None or read_to < sent_at_ms + self.grant_policy.clock_skew_ms:
                raise ReceiptTooEarly(rid)
        latest = self.latest_attempt.get(rid, 0)
        result = self.engine.capture(receipt, now_ms, latest_attempt=latest)
        if result.status != "rejected" or self.engine.hold(rid) is None:
            self.release_due.pop(rid, None)
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

    def on_assignment(self, assignment: models.Assignment, now_ms: int) -> None:
        """Note the request's newest attempt (idempotent: re-reading assignments is harmless).

        Noted even before its request is read: a granted request is placed at once.
        """
        rid = assignment.request_id
        if self.engine.settled(rid):
            return
        if assignment.attempt > self.latest_attempt.get(rid, 0):
            self.latest_attempt[rid] = assignment.attempt
            self._attempt_noted_ms[rid] = now_ms
            # An outcome of an earlier attempt must not release the hold under the new one.
            self.release_due.pop(rid, None)

    # ---- time -------------------------------------------------------------------------

    def tick(
        self,
        now_ms: int,
        receipts_read_to_ms: int | None = None,
        requests_read_to_ms: int | None = None,
    ) -> list[str]:
        """Release holds whose outcome came without a receipt, and expired holds; close grants
        past their use.

        A hold expires only once every receipt sent before its expiry has been read:
        `receipts_read_to_ms` is how far in (record) time `usage.receipts` has been consumed
        (None: not known yet, so nothing expires). After downtime the backlog still holds
        receipts sent in time; expiring by the wall clock first would refuse them. Likewise a
        grant closes only once `inference.requests` is read past its end (`requests_read_to_ms`):
        every request admitted against it has then carved its hold.
        """
        self.requests_read_to_ms = requests_read_to_ms
        if requests_read_to_ms is not None:
            skew = self.grant_policy.clock_skew_ms
            for grant in self.engine.open_grants():
                if grant.usable_until_ms + skew <= requests_read_to_ms:
                    self._close_grant(grant, now_ms, "expired")
        released = []
        for rid, at in list(self.release_due.items()):
            if at <= now_ms:
                del self.release_due[rid]
                if self.engine.release_hold(rid, now_ms, "outcome without receipt"):
                    released.append(rid)
        if receipts_read_to_ms is not None:
            released += self.engine.expire_holds(min(now_ms, receipts_read_to_ms), at_ms=now_ms)
        self._forget_attempts(now_ms)
        if self.window_ms is not None:
            self.engine.forget_settled(now_ms - self.window_ms)
        return released

    def _too_old(self, at_ms: int, now_ms: int) -> bool:
        return self.window_ms is not None and at_ms + self.window_ms <= now_ms

    def _forget_attempts(self, now_ms: int) -> None:
        """Drop placements of settled requests, and of requests still not read
        `ATTEMPTS_KEPT_MS` after their placement was (no hold will come)."""
        engine, keep_ms = self.engine, ATTEMPTS_KEPT_MS
        for rid in list(self.latest_attempt):
            if engine.hold(rid) is not None:
                continue
            if engine.settled(rid) or self._attempt_noted_ms.get(rid, 0) + keep_ms <= now_ms:
                del self.latest_attempt[rid]
                self._attempt_noted_ms.pop(rid, None)


def receipt_of(data: dict[str, Any]) -> Receipt:
    """The receipt in a decoded `usage.receipts` record, or BadRecord saying what is wrong."""
    try:
        return receipt_from_record(data)
    except BillingError as exc:
        raise BadRecord(str(exc)) from None


def _valid_id(value: str) -> bool:
    try:
        check_id(value, "account_id")
    except BillingError:
        return False
    return True
