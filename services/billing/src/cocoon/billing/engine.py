"""Billing's domain engine: accounts, holds, receipt capture, expiry, deposits, payouts.

Every state change is one ledger entry with a deterministic id, and every piece of state here
(open accounts, holds, captures, rejections) is derived from the entries, so
`BillingEngine.replay(entries, ...)` after a crash or a rebalance lands in exactly the same state.
Entries go to `sink` (the durable log) before they are applied in memory, and only after the
ledger has checked them, so the log never holds an entry the ledger would refuse.

`state()` is all of it as JSON-ready data, and `BillingEngine.restore(state, ...)` followed by the
entries recorded after it lands in the same state as replaying every entry: the billing service
snapshots it (docs/billing-service.md) so a restart does not replay history. With an idempotence
window (`forget_settled`), what is remembered of settled requests and rejected receipts is
dropped once no replay of them can be acted on any more, so the state does not grow with history.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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
    LedgerStateError,
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
class Closed:
    """What is remembered of a settled request: which entry closed its hold, and for a charge
    the receipt's digest and what was released (a replayed receipt answers `duplicate`)."""

    entry_id: str
    receipt_digest: str | None
    released: int
    # Billing time after which no replay of the request or its receipt is acted on (see
    # `forget_settled`): the latest of the hold's expiry, the closing and the receipt's end.
    settled_ms: int


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
    # The receipt's own end time (signed by the worker; 0 when not known).
    finished_at_ms: int = 0


def receipt_digest(receipt: Receipt) -> str:
    """A stable digest of a receipt's content, to tell a replay from a different receipt."""
    # repr of a tuple of str/int/bool/bytes is unambiguous and stable across Python versions.
    content = (*receipt_fields(receipt).values(), bytes(receipt.signature))
    return hashlib.sha256(repr(content).encode()).hexdigest()[:32]


Postings = tuple[tuple[str, int], ...]


def grant_id_for(request_id: str) -> str:
    """The id of the admission grant a request asks for (a replayed ask grants once)."""
    return f"g-{request_id}"


def grant_id_asker(grant_id: str) -> str:
    """The request that asked for grant `grant_id` (see `grant_id_for`)."""
    return grant_id.removeprefix("g-")


def _shallow(record: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict, values not copied: `dataclasses.asdict` deep-copies
    each one, which was most of the cost of a snapshot (60 us per settled request)."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


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
        keep_entries: bool = True,
    ) -> None:
        """`keep_entries=False`: the ledger keeps balances and ids, not the entries (the
        service's engine, whose entries are on the ledger topic)."""
        self.prices = prices
        self._verify = verify
        self._attested_address = attested_address
        self._sink = sink
        self.ledger = Ledger(keep_entries=keep_entries)
        self._clients: set[str] = set()
        self._holds: dict[str, Hold] = {}  # open holds by request id
        self._closed: dict[str, Closed] = {}  # settled requests by id
        self._expiry: list[tuple[int, str]] = []  # heap of (expires_at_ms, request id)
        self._grants: dict[str, Grant] = {}  # open admission grants by grant id
        self._closed_grants: dict[str, int] = {}  # grant id -> when closed (not forgotten yet)
        self._rejected: dict[str, RejectionRecord] = {}  # by receipt digest
        # worker id -> {payout address a receipt was earned under (or UNATTESTED): nanoTON
        # still owed}. Sums to the worker's balance; payouts draw on one address at a time.
        self._earned: dict[str, dict[str, int]] = {}
        # Refundable top-ups by id, until refunded; then in `_refunded`, so a repeated ask is
        # answered the same way.
        self._refundable: dict[str, CreditedTopUp] = {}
        self._refunded: dict[str, CreditedTopUp] = {}
        self._unclaimed: dict[str, int] = {}  # deposit id -> amount credited to `unclaimed`
        self._payouts: dict[str, dict[str, Any]] = {}  # payout id -> its start entry's meta
        self._deposit_cursor: dict[str, int] = {}  # deposit address -> newest credited lt
        # Heap of (when, "request" | "reject" | "grant", key): what `forget_settled` may drop.
        self._forgettable: list[tuple[int, str, str]] = []

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
        keep_entries: bool = True,
    ) -> BillingEngine:
        """Rebuild the engine exactly from its entries (sink is attached afterwards)."""
        engine = cls(prices, verify, attested_address=attested_address, keep_entries=keep_entries)
        for entry in entries:
            engine._apply(entry)
        engine._sink = sink
        return engine

    @classmethod
    def restore(
        cls,
        state: Mapping[str, Any],
        entries_after: Iterable[Entry],
        prices: Prices,
        verify: ReceiptVerify,
        sink: EntrySink | None = None,
        *,
        attested_address: AttestedAddress = _no_address,
    ) -> BillingEngine:
        """The engine `state()` described, then the entries recorded after it (sink afterwards).

        Its ledger keeps balances and remembered ids, not entries: those stay on the log."""
        engine = cls(prices, verify, attested_address=attested_address)
        engine._load(state)
        for entry in entries_after:
            engine._apply(entry)
        engine._sink = sink
        return engine

    def state(self) -> dict[str, Any]:
        """Everything the engine knows, JSON-ready (`restore` reads it back)."""
        return {
            "ledger": self.ledger.state(),
            "clients": sorted(self._clients),
            "holds": [
                {**_shallow(h), "prices": _prices_meta(h.prices)} for h in self._holds.values()
            ],
            "closed": {
                rid: (c.entry_id, c.receipt_digest, c.released, c.settled_ms)
                for rid, c in self._closed.items()
            },
            "grants": [
                {**_shallow(g), "prices": _prices_meta(g.prices)} for g in self._grants.values()
            ],
            "closed_grants": dict(self._closed_grants),
            "rejected": {
                digest: {**_shallow(r), "reason": r.reason.value}
                for digest, r in self._rejected.items()
            },
            "earned": {w: dict(owed) for w, owed in self._earned.items()},
            "unclaimed": dict(self._unclaimed),
            "payouts": {p: dict(meta) for p, meta in self._payouts.items()},
            "deposit_cursor": dict(self._deposit_cursor),
            "refundable": {t: _shallow(c) for t, c in self._refundable.items()},
            "refunded": {t: _shallow(c) for t, c in self._refunded.items()},
        }

    def _load(self, state: Mapping[str, Any]) -> None:
        self.ledger = Ledger.restored(state["ledger"])
        self._clients = set(state["clients"])
        for raw in state["holds"]:
            hold = Hold(**{**raw, "prices": Prices(**raw["prices"])})
            self._holds[hold.request_id] = hold
            heapq.heappush(self._expiry, (hold.expires_at_ms, hold.request_id))
        for rid, fields in state["closed"].items():
            closed = Closed(*fields)
            self._closed[rid] = closed
            heapq.heappush(self._forgettable, (closed.settled_ms, "request", rid))
        for raw in state["grants"]:
            grant = Grant(**{**raw, "prices": Prices(**raw["prices"])})
            self._grants[grant.grant_id] = grant
        for grant_id, closed_ms in state["closed_grants"].items():
            self._closed_grants[grant_id] = closed_ms
            heapq.heappush(self._forgettable, (closed_ms, "grant", grant_id))
        for digest, raw in state["rejected"].items():
            rejection = RejectionRecord(**{**raw, "reason": Rejection(raw["reason"])})
            self._rejected[digest] = rejection
            when = max(rejection.at_ms, rejection.finished_at_ms)
            heapq.heappush(self._forgettable, (when, "reject", digest))
        self._earned = {w: dict(owed) for w, owed in state["earned"].items()}
        self._unclaimed = dict(state["unclaimed"])
        self._payouts = {p: dict(meta) for p, meta in state["payouts"].items()}
        self._deposit_cursor = dict(state["deposit_cursor"])
        self._refundable = {t: CreditedTopUp(**raw) for t, raw in state["refundable"].items()}
        self._refunded = {t: CreditedTopUp(**raw) for t, raw in state["refunded"].items()}

    def forget_settled(self, horizon_ms: int) -> int:
        """Forget settled requests, closed grants and rejected receipts whose time is at or
        before `horizon_ms` (now less the idempotence window); how many were forgotten.

        Safe only while replays that old are not acted on: the billing service ignores a
        request whose deadline, and refuses a receipt whose end, is that old (a request
        forgotten here has its hold's expiry, which is past its deadline, and its receipt's
        end at or before the horizon). A forgotten request's grant is forgotten with it."""
        forgotten: list[str] = []
        while self._forgettable and self._forgettable[0][0] <= horizon_ms:
            _, what, key = heapq.heappop(self._forgettable)
            if what == "request":
                closed = self._closed.pop(key, None)
                if closed is not None:
                    forgotten += (f"hold:{key}", closed.entry_id)
                    forgotten += self._forget_grant(grant_id_for(key))
            elif what == "grant":
                # While its asking request is remembered, a replay of it must still find the
                # grant closed; the request's own forgetting takes the grant along.
                if not self.ever_held(grant_id_asker(key)):
                    forgotten += self._forget_grant(key)
            elif self._rejected.pop(key, None) is not None:
                forgotten.append(f"reject:{key}")
        self.ledger.forget(forgotten)
        return len(forgotten)

    def _forget_grant(self, grant_id: str) -> list[str]:
        if self._closed_grants.pop(grant_id, None) is None:
            return []
        return [f"grant:{grant_id}", f"grant-closed:{grant_id}"]

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
            self._closed_grants[m["grant_id"]] = entry.at_ms
            heapq.heappush(self._forgettable, (entry.at_ms, "grant", m["grant_id"]))
        elif entry.kind in ("charge", "release"):
            rid = m["request_id"]
            held = self._holds.pop(rid, None)
            finished_at_ms = m.get("finished_at_ms", 0)
            closed = Closed(
                entry_id=entry.entry_id,
                receipt_digest=m.get("receipt_digest"),
                released=m.get("released", 0),
                settled_ms=max(
                    entry.at_ms, finished_at_ms, held.expires_at_ms if held is not None else 0
                ),
            )
            self._closed[rid] = closed
            heapq.heappush(self._forgettable, (closed.settled_ms, "request", rid))
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
            payout_id = entry.entry_id.removeprefix("payout:")
            self._payouts[payout_id] = dict(m)
            self._owe(m["worker_id"], m.get("earned_under", UNATTESTED), -m["amount"])
        elif entry.kind == "payout_reversed":
            start = self._payouts.get(entry.entry_id.removeprefix("payout-reversed:"), {})
            self._owe(m["worker_id"], start.get("earned_under", UNATTESTED), m["amount"])
        elif entry.kind == "deposit":
            deposit_id = entry.entry_id.removeprefix("deposit:")
            unclaimed = dict(entry.postings).get(UNCLAIMED)
            if unclaimed is not None:
                self._unclaimed[deposit_id] = unclaimed
            address = m.get("source_address")
            if address:
                lt = int(deposit_id.split(":")[0])
                self._deposit_cursor[address] = max(self._deposit_cursor.get(address, 0), lt)
        elif entry.kind == "receipt_rejected":
            digest = entry.entry_id.removeprefix("reject:")
            rejection = RejectionRecord(
                receipt_id=m["receipt_id"],
                request_id=m["request_id"],
                worker_id=m["worker_id"],
                reason=Rejection(m["reason"]),
                detail=m["detail"],
                attributable=m["attributable"],
                at_ms=entry.at_ms,
                finished_at_ms=m.get("finished_at_ms", 0),
            )
            self._rejected[digest] = rejection
            when = max(entry.at_ms, rejection.finished_at_ms)
            heapq.heappush(self._forgettable, (when, "reject", digest))

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
        if f"hold:{request_id}" in self.ledger:
            # Held once, yet neither open nor settled: the indices lost it. Holding it again
            # would be refused as a duplicate entry, so there would be no hold to return.
            raise LedgerStateError(
                f"hold:{request_id} is in the ledger, but the request is neither open nor settled"
            )
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
        earlier = self._rejected.get(digest)
        if earlier is not None:
            # The first decision on a receipt stands, so a replay decides the same way even
            # if the hold has since expired.
            return CaptureResult("rejected", rid, reason=earlier.reason, detail=earlier.detail)
        closed = self._closed.get(rid)
        if closed is not None and closed.receipt_digest == digest:
            return CaptureResult("duplicate", rid, released=closed.released)
        if not self._verify(receipt):
            return self._reject(
                receipt,
                digest,
                Rejection.BAD_SIGNATURE,
                "signature not valid for the key in the worker's current verdict",
                at_ms,
                attributable=False,
            )
        if closed is not None:
            if closed.entry_id.startswith("charge:"):
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
        if receipt.finished_at_ms:
            meta["finished_at_ms"] = receipt.finished_at_ms
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
        meta: dict[str, object] = {
            "receipt_id": receipt.receipt_id,
            "request_id": receipt.request_id,
            "worker_id": receipt.worker_id,
            "reason": reason.value,
            "detail": detail,
            "attributable": attributable,
        }
        if receipt.finished_at_ms:
            meta["finished_at_ms"] = receipt.finished_at_ms
        # Keyed by content: a replayed bad receipt is recorded (and counted) once.
        self._record(Entry(f"reject:{digest}", "receipt_rejected", (), at_ms, meta))
        return CaptureResult("rejected", receipt.request_id, reason=reason, detail=detail)

    def rejections(self, worker_id: str | None = None) -> list[RejectionRecord]:
        return [r for r in self._rejected.values() if worker_id is None or r.worker_id == worker_id]

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
        if f"deposit:{deposit_id}" not in self.ledger:
            raise BillingError(f"no deposit {deposit_id}")
        amount = self._unclaimed.get(deposit_id)
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
        amount = start["amount"]
        meta = {"worker_id": start["worker_id"], "amount": amount, "tx": tx}
        postings = ((PAYOUTS_PENDING, -amount), (TON_PAYOUTS, amount))
        entry = Entry(f"payout-confirmed:{payout_id}", "payout_confirmed", postings, at_ms, meta)
        return self._record(entry)

    def reverse_payout(self, payout_id: str, at_ms: int = 0, reason: str = "") -> bool:
        """A payout proven never to land goes back to the worker's earnings."""
        start = self._payout_start(payout_id)
        if f"payout-confirmed:{payout_id}" in self.ledger:
            raise BillingError(f"payout {payout_id} is confirmed; it cannot be reversed")
        amount = start["amount"]
        worker = start["worker_id"]
        meta = {"worker_id": worker, "amount": amount, "reason": reason}
        postings = ((PAYOUTS_PENDING, -amount), (worker_account(worker), amount))
        entry = Entry(f"payout-reversed:{payout_id}", "payout_reversed", postings, at_ms, meta)
        return self._record(entry)

    def _payout_start(self, payout_id: str) -> dict[str, Any]:
        start = self._payouts.get(payout_id)
        if start is None:
            raise BillingError(f"no payout {payout_id}")
        return start

    def deposit_cursor(self, address: str) -> int:
        """The lt of the newest deposit credited from `address`'s transactions (0: none)."""
        return self._deposit_cursor.get(address, 0)
