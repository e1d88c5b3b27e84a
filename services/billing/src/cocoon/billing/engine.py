"""Billing's domain engine: accounts, holds, receipt capture, expiry, deposits, payouts.

Every state change is one ledger entry with a deterministic id, and every piece of state here
(open accounts, holds, captures, rejections) is derived from the entries, so
`BillingEngine.replay(entries, ...)` after a crash or a rebalance lands in exactly the same state.
Entries go to `sink` (the durable log) before they are applied in memory, and only after the
ledger has checked them, so the log never holds an entry the ledger would refuse.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cocoon.billing.ledger import (
    COMMISSION,
    PAYOUTS_PENDING,
    TON_DEPOSITS,
    TON_PAYOUTS,
    UNCLAIMED,
    Entry,
    Ledger,
    client_account,
    holds_account,
    topup_account,
    worker_account,
)
from cocoon.billing.money import (
    BillingError,
    GrantError,
    InsufficientFundsError,
    UnknownAccountError,
    check_amount,
    check_count,
    check_id,
)
from cocoon.billing.pricing import Cost, Prices, cost, max_cost
from cocoon.billing.receipts import Receipt, ReceiptVerify, Rejection, receipt_fields

EntrySink = Callable[[Entry], None]
# The payout address in a worker's current verdict (the one whose key verifies its receipts),
# or None when that verdict carries none (claims v1).
AttestedAddress = Callable[[str], str | None]
UNATTESTED = ""  # the earnings bucket of receipts earned under a verdict without an address
# Top-up sources whose payments can be refunded where they were made (a trial cannot).
REFUNDABLE_SOURCES = frozenset({"telegram_stars"})


def _no_address(_worker_id: str) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Hold:
    request_id: str
    client_id: str
    amount: int
    max_tokens: int
    prompt_size: int
    max_coefficient: int
    expires_at_ms: int
    model: str
    # Prices the client was admitted at; the capture charges at these.
    prices: Prices
    # The admission grant it was carved from (None: held from the client's balance).
    grant_id: str | None = None
    # When the gateway accepted the request (its placements are not older than this).
    requested_at_ms: int = 0


@dataclass(slots=True)
class Grant:
    """Funds held ahead of time for one gateway instance to admit one account's requests.

    The gateway carves each request's hold out of `remaining` itself (same formula, same
    prices), so it admits without waiting for billing; billing carves the same holds when it
    reads those requests, and returns what is left when the grant is closed.
    """

    grant_id: str
    client_id: str
    gateway_id: str
    amount: int
    remaining: int
    usable_until_ms: int
    prices: Prices


@dataclass(frozen=True, slots=True)
class CaptureResult:
    status: str  # "captured", "duplicate" or "rejected"
    request_id: str
    cost: Cost | None = None
    released: int = 0
    reason: Rejection | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CreditedTopUp:
    """A top-up paid with money that can be given back at its source (Telegram Stars)."""

    topup_id: str
    client_id: str
    amount: int
    source: str
    paid_amount: int
    reference: str


@dataclass(frozen=True, slots=True)
class RefundDecision:
    topup_id: str
    client_id: str
    debited: bool
    topup: CreditedTopUp | None = None  # what was debited (None when refused)
    reason: str = ""  # why it was refused, for the user


@dataclass(frozen=True, slots=True)
class RejectionRecord:
    receipt_id: str
    request_id: str
    worker_id: str
    reason: Rejection
    detail: str
    # False when the signature did not verify: anyone could have sent it, so the scheduler
    # must not hold it against the named worker.
    attributable: bool
    at_ms: int


def receipt_digest(receipt: Receipt) -> str:
    """A stable digest of a receipt's content, to tell a replay from a different receipt."""
    # repr of a tuple of str/int/bool/bytes is unambiguous and stable across Python versions.
    content = (*receipt_fields(receipt).values(), bytes(receipt.signature))
    return hashlib.sha256(repr(content).encode()).hexdigest()[:32]


Postings = tuple[tuple[str, int], ...]


def _to_held(client_id: str, amount: int) -> Postings:
    """Move `amount` of a client's funds from available to held (nothing for 0)."""
    if not amount:
        return ()
    return ((client_account(client_id), -amount), (holds_account(client_id), amount))


def _to_available(client_id: str, amount: int) -> Postings:
    """Move `amount` of a client's funds from held back to available (nothing for 0)."""
    if not amount:
        return ()
    return ((holds_account(client_id), -amount), (client_account(client_id), amount))


def _prices_meta(p: Prices) -> dict[str, int]:
    return {
        "price_per_token": p.price_per_token,
        "worker_fee_per_token": p.worker_fee_per_token,
        "prompt_bps": p.prompt_bps,
        "cached_bps": p.cached_bps,
        "completion_bps": p.completion_bps,
        "reasoning_bps": p.reasoning_bps,
    }


class BillingEngine:
    """The billing state machine over one ledger. Not thread-safe: one owner per partition."""

    def __init__(
        self,
        prices: Prices,
        verify: ReceiptVerify,
        sink: EntrySink | None = None,
        *,
        attested_address: AttestedAddress = _no_address,
    ) -> None:
        self.prices = prices
        self._verify = verify
        self._attested_address = attested_address
        self._sink = sink
        self.ledger = Ledger()
        self._clients: set[str] = set()
        self._holds: dict[str, Hold] = {}  # open holds by request id
        self._closed: dict[str, str] = {}  # request id -> entry id that closed its hold
        self._expiry: list[tuple[int, str]] = []  # heap of (expires_at_ms, request id)
        self._grants: dict[str, Grant] = {}  # open admission grants by grant id
        self._rejections: list[RejectionRecord] = []
        # worker id -> {payout address a receipt was earned under (or UNATTESTED): nanoTON
        # still owed}. Sums to the worker's balance; payouts draw on one address at a time.
        self._earned: dict[str, dict[str, int]] = {}
        # Refundable top-ups by id, until refunded; then in `_refunded`, so a repeated ask is
        # answered the same way.
        self._refundable: dict[str, CreditedTopUp] = {}
        self._refunded: dict[str, CreditedTopUp] = {}

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def replay(
        cls,
        entries: Iterable[Entry],
        prices: Prices,
        verify: ReceiptVerify,
        sink: EntrySink | None = None,
        *,
        attested_address: AttestedAddress = _no_address,
    ) -> BillingEngine:
        """Rebuild the engine exactly from its entries (sink is attached afterwards)."""
        engine = cls(prices, verify, attested_address=attested_address)
        for entry in entries:
            engine._apply(entry)
        engine._sink = sink
        return engine

    def _record(self, entry: Entry) -> bool:
        updates = self.ledger.prepare(entry)
        if updates is None:
            return False
        if self._sink is not None:
            self._sink(entry)
        self.ledger.commit(entry, updates)
        self._index(entry)
        return True

    def _apply(self, entry: Entry) -> None:
        if self.ledger.append(entry):
            self._index(entry)

    def _index(self, entry: Entry) -> None:
        m = entry.meta
        if entry.kind == "account_opened":
            self._clients.add(m["client_id"])
        elif entry.kind == "hold":
            hold = Hold(
                request_id=m["request_id"],
                client_id=m["client_id"],
                amount=m["amount"],
                max_tokens=m["max_tokens"],
                prompt_size=m["prompt_size"],
                max_coefficient=m["max_coefficient"],
                expires_at_ms=m["expires_at_ms"],
                model=m["model"],
                prices=Prices(**m["prices"]),
                grant_id=m.get("grant_id"),
                requested_at_ms=m.get("requested_at_ms", entry.at_ms),
            )
            self._holds[hold.request_id] = hold
            heapq.heappush(self._expiry, (hold.expires_at_ms, hold.request_id))
            if hold.grant_id is not None:
                self._grants[hold.grant_id].remaining -= hold.amount
        elif entry.kind == "grant":
            self._grants[m["grant_id"]] = Grant(
                grant_id=m["grant_id"],
                client_id=m["client_id"],
                gateway_id=m["gateway_id"],
                amount=m["amount"],
                remaining=m["amount"],
                usable_until_ms=m["usable_until_ms"],
                prices=Prices(**m["prices"]),
            )
        elif entry.kind == "grant_closed":
            self._grants.pop(m["grant_id"], None)
        elif entry.kind in ("charge", "release"):
            self._holds.pop(m["request_id"], None)
            self._closed[m["request_id"]] = entry.entry_id
            if entry.kind == "charge":
                self._owe(m["worker_id"], m.get("payout_address", UNATTESTED), m["worker_fee"])
        elif entry.kind == "topup" and m["source"] in REFUNDABLE_SOURCES:
            topup_id = entry.entry_id.removeprefix("topup:")
            self._refundable[topup_id] = CreditedTopUp(
                topup_id,
                m["client_id"],
                m["amount"],
                m["source"],
                m["paid_amount"],
                m["reference"],
            )
        elif entry.kind == "refund":
            self._refunded[m["topup_id"]] = self._refundable.pop(m["topup_id"])
        elif entry.kind == "payout":
            self._owe(m["worker_id"], m.get("earned_under", UNATTESTED), -m["amount"])
        elif entry.kind == "payout_reversed":
            start = self.ledger.get(entry.entry_id.replace("payout-reversed:", "payout:", 1))
            earned_under = start.meta.get("earned_under", UNATTESTED) if start else UNATTESTED
            self._owe(m["worker_id"], earned_under, m["amount"])
        elif entry.kind == "receipt_rejected":
            self._rejections.append(
                RejectionRecord(
                    receipt_id=m["receipt_id"],
                    request_id=m["request_id"],
                    worker_id=m["worker_id"],
                    reason=Rejection(m["reason"]),
                    detail=m["detail"],
                    attributable=m["attributable"],
                    at_ms=entry.at_ms,
                )
            )

    # ---- accounts -----------------------------------------------------------------------

    def open_account(self, client_id: str, at_ms: int = 0) -> bool:
        """Open a client account (idempotent). API keys map to these ids."""
        check_id(client_id, "client id")
        return self._record(
            Entry(f"open:{client_id}", "account_opened", (), at_ms, {"client_id": client_id})
        )

    def has_account(self, client_id: str) -> bool:
        return client_id in self._clients

    def _require(self, client_id: str) -> None:
        if client_id not in self._clients:
            raise UnknownAccountError(f"unknown client account {client_id!r}")

    def available(self, client_id: str) -> int:
        self._require(client_id)
        return self.ledger.balance(client_account(client_id))

    def held(self, client_id: str) -> int:
        self._require(client_id)
        return self.ledger.balance(holds_account(client_id))

    def _owe(self, worker_id: str, address: str, amount: int) -> None:
        owed = self._earned.setdefault(worker_id, {})
        owed[address] = owed.get(address, 0) + amount
        if not owed[address]:
            del owed[address]

    def earnings_by_address(self, worker_id: str) -> dict[str, int]:
        """What the worker is owed, by the payout address each receipt was earned under
        (UNATTESTED for receipts under a verdict without one)."""
        return dict(self._earned.get(worker_id, {}))

    def earnings(self, worker_id: str) -> int:
        check_id(worker_id, "worker id")
        return self.ledger.balance(worker_account(worker_id))

    # ---- holds --------------------------------------------------------------------------

    def open_hold(
        self,
        request_id: str,
        client_id: str,
        *,
        max_tokens: int,
        prompt_size: int,
        max_coefficient: int,
        expires_at_ms: int,
        model: str = "",
        at_ms: int = 0,
        grant_id: str | None = None,
        requested_at_ms: int | None = None,
    ) -> Hold:
        """Hold the request's maximum cost, or raise InsufficientFundsError with the shortfall.

        With `grant_id` the hold is carved out of that open admission grant of the same client
        (at the grant's prices) instead of the balance, or GrantError says why it cannot be.
        Idempotent per request id: a replay of the same request returns the same hold.
        """
        check_id(request_id, "request id")
        self._require(client_id)
        check_count(expires_at_ms, "expires_at_ms")
        if request_id in self._holds:
            return self._holds[request_id]
        if request_id in self._closed:
            raise BillingError(f"request {request_id} was already settled")
        if grant_id is not None:
            grant = self._grants.get(grant_id)
            if grant is None or grant.client_id != client_id:
                raise GrantError(f"no open grant {grant_id!r} of {client_id}")
            prices = grant.prices
            amount = max_cost(max_tokens, prompt_size, prices, max_coefficient)
            if amount > grant.remaining:
                raise GrantError(
                    f"grant {grant_id} has {grant.remaining} nanoTON left, the hold needs {amount}"
                )
            postings: Postings = ()  # the grant's funds are already held
        else:
            prices = self.prices
            amount = max_cost(max_tokens, prompt_size, prices, max_coefficient)
            available = self.ledger.balance(client_account(client_id))
            if amount > available:
                raise InsufficientFundsError(client_id, amount, available)
            postings = _to_held(client_id, amount)
        meta = {
            "request_id": request_id,
            "client_id": client_id,
            "amount": amount,
            "max_tokens": max_tokens,
            "prompt_size": prompt_size,
            "max_coefficient": max_coefficient,
            "expires_at_ms": expires_at_ms,
            "model": model,
            "prices": _prices_meta(prices),
            "requested_at_ms": at_ms if requested_at_ms is None else requested_at_ms,
        }
        if grant_id is not None:
            meta["grant_id"] = grant_id
        self._record(Entry(f"hold:{request_id}", "hold", postings, at_ms, meta))
        return self._holds[request_id]

    def hold(self, request_id: str) -> Hold | None:
        return self._holds.get(request_id)

    def settled(self, request_id: str) -> bool:
        """The request was held and its hold is closed (charged or released)."""
        return request_id in self._closed

    def ever_held(self, request_id: str) -> bool:
        return request_id in self._holds or request_id in self._closed

    def open_holds(self) -> list[Hold]:
        return list(self._holds.values())

    def expire_holds(self, now_ms: int, at_ms: int | None = None) -> list[str]:
        """Release every open hold whose expiry is at or before `now_ms` (recorded at `at_ms`,
        default `now_ms`); returns their request ids."""
        released = []
        while self._expiry and self._expiry[0][0] <= now_ms:
            _, request_id = heapq.heappop(self._expiry)
            hold = self._holds.get(request_id)
            if hold is None:
                continue  # captured meanwhile
            self._release(hold, now_ms if at_ms is None else at_ms, "expired")
            released.append(request_id)
        return released

    def release_hold(self, request_id: str, at_ms: int = 0, reason: str = "released") -> bool:
        """Release an open hold (e.g. an outcome arrived and no receipt followed); False when
        there is none (never held, already captured or released)."""
        hold = self._holds.get(request_id)
        if hold is None:
            return False
        self._release(hold, at_ms, reason)
        return True

    def _release(self, hold: Hold, at_ms: int, reason: str) -> None:
        postings = _to_available(hold.client_id, hold.amount)
        meta = {"request_id": hold.request_id, "client_id": hold.client_id, "reason": reason}
        self._record(Entry(f"release:{hold.request_id}", "release", postings, at_ms, meta))

    # ---- admission grants ---------------------------------------------------------------

    def open_grant(
        self,
        grant_id: str,
        client_id: str,
        *,
        gateway_id: str,
        amount: int,
        usable_until_ms: int,
        at_ms: int = 0,
    ) -> Grant:
        """Hold `amount` of the client's balance for `gateway_id` to admit against, or raise
        InsufficientFundsError. Idempotent per grant id while the grant is open."""
        check_id(grant_id, "grant id")
        self._require(client_id)
        check_amount(amount, "grant amount", allow_zero=False)
        check_count(usable_until_ms, "usable_until_ms")
        if grant_id in self._grants:
            return self._grants[grant_id]
        if f"grant:{grant_id}" in self.ledger:
            raise GrantError(f"grant {grant_id} was already closed")
        available = self.ledger.balance(client_account(client_id))
        if amount > available:
            raise InsufficientFundsError(client_id, amount, available)
        postings = _to_held(client_id, amount)
        meta = {
            "grant_id": grant_id,
            "client_id": client_id,
            "gateway_id": gateway_id,
            "amount": amount,
            "usable_until_ms": usable_until_ms,
            "prices": _prices_meta(self.prices),
        }
        self._record(Entry(f"grant:{grant_id}", "grant", postings, at_ms, meta))
        return self._grants[grant_id]

    def grant(self, grant_id: str) -> Grant | None:
        return self._grants.get(grant_id)

    def open_grants(self) -> list[Grant]:
        return list(self._grants.values())

    def close_grant(self, grant_id: str, at_ms: int = 0, reason: str = "expired") -> int | None:
        """Return an open grant's remainder to its client; the amount, or None if not open.

        Only once every request admitted against it has been read: their holds come out of it.
        """
        grant = self._grants.get(grant_id)
        if grant is None:
            return None
        returned = grant.remaining
        client = grant.client_id
        postings = _to_available(client, returned)
        meta = {
            "grant_id": grant_id,
            "client_id": client,
            "gateway_id": grant.gateway_id,
            "returned": returned,
            "reason": reason,
        }
        self._record(Entry(f"grant-closed:{grant_id}", "grant_closed", postings, at_ms, meta))
        return returned

    # ---- receipts -----------------------------------------------------------------------

    def capture(self, receipt: Receipt, at_ms: int = 0, latest_attempt: int = 0) -> CaptureResult:
        """Charge a verified receipt against its hold, or reject it with a reason (never both).

        `latest_attempt` is the request's newest placement known to the caller: a receipt from
        an earlier attempt is refused (the gateway dropped that attempt's stream, so the client
        received none of it), and the hold stays open for the current attempt's receipt.
        """
        rid = receipt.request_id
        digest = receipt_digest(receipt)
        earlier = self.ledger.get(f"reject:{digest}")
        if earlier is not None:
            # The first decision on a receipt stands, so a replay decides the same way even
            # if the hold has since expired.
            m = earlier.meta
            return CaptureResult("rejected", rid, reason=Rejection(m["reason"]), detail=m["detail"])
        closed_by = self._closed.get(rid)
        if closed_by is not None:
            closing = self.ledger.get(closed_by)
            if closing is not None and closing.meta.get("receipt_digest") == digest:
                return CaptureResult("duplicate", rid, released=closing.meta["released"])
        if not self._verify(receipt):
            return self._reject(
                receipt,
                digest,
                Rejection.BAD_SIGNATURE,
                "signature not valid for the key in the worker's current verdict",
                at_ms,
                attributable=False,
            )
        if closed_by is not None:
            if closed_by.startswith("charge:"):
                return self._reject(
                    receipt,
                    digest,
                    Rejection.DUPLICATE_REQUEST,
                    "request already charged by another receipt",
                    at_ms,
                )
            return self._reject(
                receipt,
                digest,
                Rejection.HOLD_CLOSED,
                "hold released (no receipt before lease end + grace)",
                at_ms,
            )
        hold = self._holds.get(rid)
        if hold is None:
            return self._reject(receipt, digest, Rejection.UNKNOWN_REQUEST, "no hold", at_ms)
        if receipt.attempt < latest_attempt:
            return self._reject(
                receipt,
                digest,
                Rejection.SUPERSEDED_ATTEMPT,
                f"attempt {receipt.attempt} was placed again as attempt {latest_attempt}",
                at_ms,
                # Late, not dishonest: its lease already expired, which the scheduler counted.
                attributable=False,
            )
        problem = self._capture_problem(receipt, hold)
        if problem is not None:
            reason, detail = problem
            return self._reject(receipt, digest, reason, detail, at_ms)
        c = cost(receipt.usage, hold.prices, receipt.coefficient)
        if c.charge > hold.amount:
            return self._reject(
                receipt,
                digest,
                Rejection.TOKENS_BEYOND_HOLD,
                f"cost {c.charge} exceeds hold {hold.amount}",
                at_ms,
            )
        released = hold.amount - c.charge
        moves = [
            (holds_account(hold.client_id), -hold.amount),
            (client_account(hold.client_id), released),
            (worker_account(receipt.worker_id), c.worker_fee),
            (COMMISSION, c.commission),
        ]
        u = receipt.usage
        meta = {
            "request_id": rid,
            "client_id": hold.client_id,
            "receipt_id": receipt.receipt_id,
            "receipt_digest": digest,
            "worker_id": receipt.worker_id,
            "model": receipt.model,
            "prompt_tokens": u.prompt,
            "cached_prompt_tokens": u.cached,
            "completion_tokens": u.completion,
            "reasoning_tokens": u.reasoning,
            "coefficient": receipt.coefficient,
            "completed": receipt.completed,
            "price_per_token": hold.prices.price_per_token,
            "charge": c.charge,
            "worker_fee": c.worker_fee,
            "commission": c.commission,
            "released": released,
        }
        # The address of the verdict whose key verified this receipt: its fee is paid there
        # whatever the worker attests later.
        address = self._attested_address(receipt.worker_id)
        if address is not None:
            meta["payout_address"] = address
        postings = tuple((a, n) for a, n in moves if n)
        self._record(Entry(f"charge:{rid}", "charge", postings, at_ms, meta))
        return CaptureResult("captured", rid, cost=c, released=released)

    def _capture_problem(self, receipt: Receipt, hold: Hold) -> tuple[Rejection, str] | None:
        if receipt.coefficient > hold.max_coefficient:
            return (
                Rejection.COEFFICIENT_ABOVE_CAP,
                f"coefficient {receipt.coefficient} above client cap {hold.max_coefficient}",
            )
        expected = self.prices.coefficient_of(receipt.worker_id)
        if receipt.worker_id in self.prices.worker_coefficients and receipt.coefficient != expected:
            return (
                Rejection.COEFFICIENT_MISMATCH,
                f"coefficient {receipt.coefficient} is not the registry's {expected}",
            )
        if receipt.usage.completion > hold.max_tokens:
            return (
                Rejection.TOKENS_BEYOND_HOLD,
                f"completion tokens {receipt.usage.completion} exceed max_tokens {hold.max_tokens}",
            )
        if receipt.usage.prompt > hold.prompt_size:
            return (
                Rejection.TOKENS_BEYOND_HOLD,
                f"prompt tokens {receipt.usage.prompt} exceed held prompt size {hold.prompt_size}",
            )
        return None

    def _reject(
        self,
        receipt: Receipt,
        digest: str,
        reason: Rejection,
        detail: str,
        at_ms: int,
        *,
        attributable: bool = True,
    ) -> CaptureResult:
        meta = {
            "receipt_id": receipt.receipt_id,
            "request_id": receipt.request_id,
            "worker_id": receipt.worker_id,
            "reason": reason.value,
            "detail": detail,
            "attributable": attributable,
        }
        # Keyed by content: a replayed bad receipt is recorded (and counted) once.
        self._record(Entry(f"reject:{digest}", "receipt_rejected", (), at_ms, meta))
        return CaptureResult("rejected", receipt.request_id, reason=reason, detail=detail)

    def rejections(self, worker_id: str | None = None) -> list[RejectionRecord]:
        return [r for r in self._rejections if worker_id is None or r.worker_id == worker_id]

    # ---- deposits -----------------------------------------------------------------------

    def credit_deposit(
        self,
        deposit_id: str,
        amount: int,
        client_id: str | None,
        *,
        at_ms: int = 0,
        note: str = "",
        source: str = "",
        source_address: str = "",
    ) -> bool:
        """Credit a chain deposit to a client, or to `unclaimed` when no known client is named.

        `deposit_id` must identify the chain transaction (e.g. `<lt>:<hash>`): a second call with
        the same id is a no-op, so re-polling the chain never credits twice.
        """
        check_amount(amount, "deposit amount")
        if f"deposit:{deposit_id}" in self.ledger:
            # Decided once: an account opened later must not turn a replay into a conflict.
            return False
        target = client_account(client_id) if client_id in self._clients else UNCLAIMED
        meta = {
            "client_id": client_id if target != UNCLAIMED else None,
            "claimed_by_comment": client_id,
            "amount": amount,
            "note": note,
            "source": source,
            "source_address": source_address,
        }
        postings = ((TON_DEPOSITS, -amount), (target, amount)) if amount else ()
        return self._record(Entry(f"deposit:{deposit_id}", "deposit", postings, at_ms, meta))

    def credit_topup(
        self,
        topup_id: str,
        client_id: str,
        amount: int,
        source: str,
        *,
        at_ms: int = 0,
        paid_amount: int = 0,
        reference: str = "",
    ) -> bool:
        """Credit a payment made outside TON (or a trial) to a client, opening its account.

        `topup_id` is derived from the payment (`stars-<hash of the telegram charge id>`): a
        second call with the same id is a no-op, so a payment delivered twice is credited once.
        """
        check_id(topup_id, "top-up id")
        check_amount(amount, "top-up amount", allow_zero=False)
        source_account = topup_account(source)
        if f"topup:{topup_id}" in self.ledger:
            return False
        self.open_account(client_id, at_ms)
        meta = {
            "client_id": client_id,
            "amount": amount,
            "source": source,
            "paid_amount": paid_amount,
            "reference": reference,
        }
        postings = ((source_account, -amount), (client_account(client_id), amount))
        return self._record(Entry(f"topup:{topup_id}", "topup", postings, at_ms, meta))

    def refund_topup(self, topup_id: str, client_id: str, at_ms: int = 0) -> RefundDecision:
        """Take a paid top-up's whole credit back so its payment can be refunded at its source,
        if the client still holds it unspent. Asked again, answers the same (without moving
        money twice): the front end may ask again after a crash before it refunded."""
        refunded = self._refunded.get(topup_id)
        if refunded is not None and refunded.client_id == client_id:
            return RefundDecision(topup_id, client_id, True, refunded)
        topup = self._refundable.get(topup_id)
        if topup is None or topup.client_id != client_id:
            reason = "there is no refundable payment with this id on your account"
            return RefundDecision(topup_id, client_id, False, reason=reason)
        available = self.ledger.balance(client_account(client_id))
        if available < topup.amount:
            reason = (
                f"your balance holds {available} of the {topup.amount} nanoTON this payment "
                "credited (the rest is spent or held for answers in progress)"
            )
            return RefundDecision(topup_id, client_id, False, reason=reason)
        meta = {
            "client_id": client_id,
            "topup_id": topup_id,
            "amount": topup.amount,
            "source": topup.source,
            "paid_amount": topup.paid_amount,
            "reference": topup.reference,
        }
        postings = (
            (client_account(client_id), -topup.amount),
            (topup_account(topup.source), topup.amount),
        )
        self._record(Entry(f"refund:{topup_id}", "refund", postings, at_ms, meta))
        return RefundDecision(topup_id, client_id, True, topup)

    def claim_unclaimed(self, deposit_id: str, client_id: str, at_ms: int = 0) -> bool:
        """Move an unclaimed deposit to a client (an operator decision, once per deposit)."""
        self._require(client_id)
        deposit = self.ledger.get(f"deposit:{deposit_id}")
        if deposit is None:
            raise BillingError(f"no deposit {deposit_id}")
        amount = dict(deposit.postings).get(UNCLAIMED)
        if amount is None:
            raise BillingError(f"deposit {deposit_id} was credited to a client, not unclaimed")
        meta = {"client_id": client_id, "deposit_id": deposit_id, "amount": amount}
        postings = ((UNCLAIMED, -amount), (client_account(client_id), amount))
        return self._record(Entry(f"claim:{deposit_id}", "claim", postings, at_ms, meta))

    # ---- payouts (TON side in cocoon.billing.ton.payouts) ----------------------------------

    def start_payout(
        self,
        payout_id: str,
        worker_id: str,
        amount: int,
        at_ms: int = 0,
        *,
        earned_under: str = UNATTESTED,
    ) -> bool:
        """Move earnings into `payouts:pending` before the transfer is signed.

        `earned_under` is the payout address the paid earnings were earned under (see
        `earnings_by_address`); the amount may not exceed what is owed under it.
        """
        check_id(worker_id, "worker id")
        check_amount(amount, "payout amount", allow_zero=False)
        meta: dict[str, object] = {"worker_id": worker_id, "amount": amount}
        if earned_under != UNATTESTED:
            meta["earned_under"] = earned_under
        if f"payout:{payout_id}" not in self.ledger:
            owed = self._earned.get(worker_id, {}).get(earned_under, 0)
            if amount > owed:
                raise BillingError(
                    f"payout {payout_id}: {amount} exceeds the {owed} earned under "
                    f"{earned_under or 'no attested address'}"
                )
        postings = ((worker_account(worker_id), -amount), (PAYOUTS_PENDING, amount))
        return self._record(Entry(f"payout:{payout_id}", "payout", postings, at_ms, meta))

    def confirm_payout(self, payout_id: str, at_ms: int = 0, tx: str = "") -> bool:
        start = self._payout_start(payout_id)
        if f"payout-reversed:{payout_id}" in self.ledger:
            raise BillingError(f"payout {payout_id} was reversed; it cannot be confirmed")
        amount = start.meta["amount"]
        meta = {"worker_id": start.meta["worker_id"], "amount": amount, "tx": tx}
        postings = ((PAYOUTS_PENDING, -amount), (TON_PAYOUTS, amount))
        entry = Entry(f"payout-confirmed:{payout_id}", "payout_confirmed", postings, at_ms, meta)
        return self._record(entry)

    def reverse_payout(self, payout_id: str, at_ms: int = 0, reason: str = "") -> bool:
        """A payout proven never to land goes back to the worker's earnings."""
        start = self._payout_start(payout_id)
        if f"payout-confirmed:{payout_id}" in self.ledger:
            raise BillingError(f"payout {payout_id} is confirmed; it cannot be reversed")
        amount = start.meta["amount"]
        worker = start.meta["worker_id"]
        meta = {"worker_id": worker, "amount": amount, "reason": reason}
        postings = ((PAYOUTS_PENDING, -amount), (worker_account(worker), amount))
        entry = Entry(f"payout-reversed:{payout_id}", "payout_reversed", postings, at_ms, meta)
        return self._record(entry)

    def _payout_start(self, payout_id: str) -> Entry:
        start = self.ledger.get(f"payout:{payout_id}")
        if start is None:
            raise BillingError(f"no payout {payout_id}")
        return start
