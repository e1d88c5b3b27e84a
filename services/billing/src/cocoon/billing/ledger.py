"""The append-only, double-entry ledger.

An entry is a balanced set of postings (signed amounts per account, summing to zero). A positive
posting increases an account's balance. Balances are derived state: `Ledger.replay(entries)`
rebuilds them exactly. Every entry has a deterministic id derived from its cause, so appending the
same entry twice is a no-op, and appending a *different* entry under an existing id is refused
(two causes colliding on one id would otherwise silently lose money).

A ledger made with `keep_entries=False` (the billing service's) keeps only balances and, per id
it still remembers, the entry or its fingerprint: `state()` / `Ledger.restored()` snapshot and
restore it, and `forget(ids)` drops ids past the engine's idempotence window, so its memory does
not grow with history.

Accounts:
    client:<id>        spendable client funds          holds:<id>       funds held for requests
    worker:<id>        worker earnings not yet paid    network:commission
    ton:deposits       source of all TON deposited (the only account allowed below zero)
    payouts:pending    worker funds in a signed-but-unconfirmed TON transfer
    ton:payouts        sink of all TON paid out        unclaimed        deposits nobody claimed
    topups:<source>    source of credits paid outside TON (topups:telegram_stars) or granted
                       by a front end (topups:trial); like ton:deposits, allowed below zero
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cocoon.billing.money import INT64_MAX, AmountError, BillingError

TON_DEPOSITS = "ton:deposits"
TON_PAYOUTS = "ton:payouts"
PAYOUTS_PENDING = "payouts:pending"
COMMISSION = "network:commission"
UNCLAIMED = "unclaimed"

# One source account per way money comes in outside TON (billing.topups `source`, lower case).
TOPUP_SOURCES = ("telegram_stars", "trial")
TOPUP_ACCOUNTS = frozenset(f"topups:{source}" for source in TOPUP_SOURCES)

_FIXED = {TON_DEPOSITS, TON_PAYOUTS, PAYOUTS_PENDING, COMMISSION, UNCLAIMED, *TOPUP_ACCOUNTS}
_PREFIXES = ("client:", "holds:", "worker:")
# Only the outside world's side of deposits may go negative: it mirrors money that came in.
_MAY_BE_NEGATIVE = {TON_DEPOSITS, *TOPUP_ACCOUNTS}


def topup_account(source: str) -> str:
    account = f"topups:{source}"
    if account not in TOPUP_ACCOUNTS:
        raise BillingError(f"unknown top-up source {source!r}")
    return account


def client_account(client_id: str) -> str:
    return f"client:{client_id}"


def holds_account(client_id: str) -> str:
    return f"holds:{client_id}"


def worker_account(worker_id: str) -> str:
    return f"worker:{worker_id}"


def check_account(name: object) -> str:
    if not isinstance(name, str):
        raise BillingError(f"account name must be a string, got {name!r}")
    if name in _FIXED:
        return name
    for prefix in _PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix) and " " not in name:
            return name
    raise BillingError(f"unknown account name {name!r}")


class LedgerConflictError(BillingError):
    """A different entry was appended under an id already in the ledger."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One balanced, immutable ledger entry."""

    entry_id: str
    kind: str
    postings: tuple[tuple[str, int], ...]
    at_ms: int = 0
    # Facts for statements and rebuilding state (request, model, tokens...); JSON-compatible.
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.entry_id, str) or not self.entry_id:
            raise BillingError("entry id must be a non-empty string")
        if not isinstance(self.kind, str) or not self.kind:
            raise BillingError("entry kind must be a non-empty string")
        postings = tuple((check_account(a), n) for a, n in self.postings)
        object.__setattr__(self, "postings", postings)
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        problem = entry_problem(self)
        if problem:
            raise AmountError(f"entry {self.entry_id}: {problem}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form `to_json` writes (and `from_json` reads)."""
        return {
            "id": self.entry_id,
            "kind": self.kind,
            "postings": [list(p) for p in self.postings],
            "at_ms": self.at_ms,
            "meta": dict(self.meta),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Entry:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Entry:
        """The entry `to_dict` described (checked as any new entry is)."""
        return cls(
            entry_id=raw["id"],
            kind=raw["kind"],
            postings=tuple((a, n) for a, n in raw["postings"]),
            at_ms=raw.get("at_ms", 0),
            meta=raw.get("meta", {}),
        )

    def same_as(self, other: Entry) -> bool:
        # at_ms is when it was recorded: a replay at another time is still the same entry.
        return (self.kind, self.postings, dict(self.meta)) == (
            other.kind,
            other.postings,
            dict(other.meta),
        )


def fingerprint(entry: Entry) -> str:
    """A digest of what `Entry.same_as` compares (not `at_ms`): kept for a remembered id."""
    content = json.dumps(
        [entry.kind, [list(p) for p in entry.postings], dict(entry.meta)],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(content.encode()).hexdigest()[:32]


def entry_problem(entry: Entry) -> str | None:
    """Why `entry` is not a valid balanced entry, or None. Also used by the audit."""
    seen: set[str] = set()
    for account, amount in entry.postings:
        if isinstance(amount, bool) or not isinstance(amount, int):
            return f"amount for {account} is not an integer: {amount!r}"
        if amount == 0:
            return f"zero posting to {account}"
        if abs(amount) > INT64_MAX:
            return f"amount for {account} exceeds int64: {amount}"
        if account in seen:
            return f"account {account} posted twice"
        seen.add(account)
    total = sum(amount for _, amount in entry.postings)
    if total != 0:
        return f"postings do not balance (sum {total})"
    return None


class Ledger:
    """Balances derived from entries, the ids seen (for idempotence) and, unless
    `keep_entries=False`, the entries in order."""

    def __init__(self, *, keep_entries: bool = True) -> None:
        self._keep = keep_entries
        self._entries: list[Entry] = []
        # id -> the entry, or its fingerprint once a snapshot was taken or restored.
        self._seen: dict[str, Entry | str] = {}
        self._balances: dict[str, int] = {}
        self._count = 0

    @classmethod
    def replay(cls, entries: Iterable[Entry]) -> Ledger:
        ledger = cls()
        for entry in entries:
            ledger.append(entry)
        return ledger

    def append(self, entry: Entry) -> bool:
        """Apply `entry`; False when the same entry is already there (a duplicate is a no-op)."""
        updates = self.prepare(entry)
        if updates is None:
            return False
        self.commit(entry, updates)
        return True

    def commit(self, entry: Entry, updates: dict[str, int]) -> None:
        """Apply what `prepare(entry)` returned (nothing may be appended in between)."""
        self._balances.update(updates)
        if self._keep:
            self._entries.append(entry)
        self._seen[entry.entry_id] = entry
        self._count += 1

    def prepare(self, entry: Entry) -> dict[str, int] | None:
        """Check `entry` without applying it: the new balances it would set, None for a
        duplicate; raises if it is invalid. Lets a caller make it durable before applying."""
        existing = self._seen.get(entry.entry_id)
        if existing is not None:
            if isinstance(existing, Entry):
                same = existing.same_as(entry)
            else:
                same = existing == fingerprint(entry)
            if same:
                return None
            raise LedgerConflictError(f"entry {entry.entry_id} already exists with other content")
        updates: dict[str, int] = {}
        for account, amount in entry.postings:
            after = self._balances.get(account, 0) + amount
            if after < 0 and account not in _MAY_BE_NEGATIVE:
                raise AmountError(
                    f"entry {entry.entry_id} would make {account} negative ({after} nanoTON)"
                )
            if abs(after) > INT64_MAX:
                raise AmountError(f"entry {entry.entry_id} would overflow {account} past int64")
            updates[account] = after
        return updates

    def forget(self, entry_ids: Iterable[str]) -> None:
        """Stop remembering these ids: an entry under one of them would be appended again.
        Only for ids whose cause can no longer come back (the engine's idempotence window)."""
        for entry_id in entry_ids:
            self._seen.pop(entry_id, None)

    def state(self) -> dict[str, Any]:
        """Balances, remembered ids (with their fingerprints) and the count, JSON-ready.

        Each remembered entry is fingerprinted once, here, and the fingerprint kept in its
        place: a service snapshotting every few thousand entries would otherwise hash the
        whole idempotence window again each time (and stall its consume loop doing it)."""
        for entry_id, seen in self._seen.items():
            if isinstance(seen, Entry):
                self._seen[entry_id] = fingerprint(seen)
        return {
            "count": self._count,
            "balances": {a: n for a, n in self._balances.items() if n},
            "seen": dict(self._seen),
        }

    @classmethod
    def restored(cls, state: Mapping[str, Any]) -> Ledger:
        """The ledger `state()` described, without its entries (they stay on the log)."""
        ledger = cls(keep_entries=False)
        ledger._count = int(state["count"])
        ledger._balances = {check_account(a): int(n) for a, n in state["balances"].items()}
        ledger._seen = {str(entry_id): str(f) for entry_id, f in state["seen"].items()}
        return ledger

    @property
    def keeps_entries(self) -> bool:
        return self._keep

    def balance(self, account: str) -> int:
        return self._balances.get(check_account(account), 0)

    def balances(self) -> dict[str, int]:
        return dict(self._balances)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._seen

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        """Entries ever applied: the sequence number of the next one."""
        return self._count

    @property
    def entries(self) -> list[Entry]:
        if not self._keep:
            raise BillingError("this ledger does not keep its entries (read billing.ledger)")
        return list(self._entries)
