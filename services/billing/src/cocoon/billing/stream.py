"""How billing's domain entries travel on Kafka: `billing.ledger` and `billing.balances` records.

A domain `Entry` is double-entry (several postings). The topic is keyed by account (co-partitioned
with `billing.balances`), so one entry becomes one `LedgerEntry` record per *owner* account it
touches: a client (its `client:` and `holds:` postings as available/held deltas), a worker, or a
platform account. Every record carries the whole entry and its ledger sequence number in `memo`
(JSON), so a replay can rebuild the exact entry from any one of its records and put entries back in
their original order even though they were spread over partitions. The records of one entry are
always written in one Kafka transaction, so a read_committed reader sees all of them or none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cocoon.billing.ledger import (
    COMMISSION,
    UNCLAIMED,
    Entry,
    Ledger,
)
from cocoon.core.codec import models
from cocoon.core.contracts import Topic

LEDGER_TOPIC = Topic.BILLING_LEDGER
BALANCES_TOPIC = Topic.BILLING_BALANCES
EARNINGS_TOPIC = Topic.BILLING_EARNINGS
EARNING_RECORD = "cocoon.billing.WorkerEarning"
WORKER_ACCOUNT_PREFIX = "worker:"
MEMO_VERSION = 1

# Domain entry kind -> LedgerEntryKind of the client-side record (workers and the network get
# WORKER_CREDIT / COMMISSION on a charge).
_KIND = {
    "hold": "HOLD",
    "grant": "HOLD",
    "release": "RELEASE",
    "grant_closed": "RELEASE",
    "charge": "CHARGE",
    "deposit": "DEPOSIT",
    "claim": "DEPOSIT",
    "payout": "PAYOUT",
    "payout_confirmed": "PAYOUT",
    "payout_reversed": "PAYOUT_REVERSAL",
}


def owner_of(account: str) -> tuple[str, str, str]:
    """(record account id, AccountKind, 'available' | 'held') for a ledger account name.

    Clients are keyed by their bare id, the same key as `inference.requests`; workers keep their
    `worker:` prefix and platform accounts their full name (ids cannot contain ':').
    """
    if account.startswith("client:"):
        return account.removeprefix("client:"), "CLIENT", "available"
    if account.startswith("holds:"):
        return account.removeprefix("holds:"), "CLIENT", "held"
    if account.startswith("worker:"):
        return account, "WORKER", "available"
    return account, "PLATFORM", "available"


def account_kind(account_id: str) -> str:
    """AccountKind of a record account id (as `owner_of` names them)."""
    if account_id.startswith("worker:"):
        return "WORKER"
    return "PLATFORM" if ":" in account_id or account_id == UNCLAIMED else "CLIENT"


def _subject(entry: Entry) -> str:
    """The account a posting-free entry (account opened, receipt rejected) is filed under."""
    meta = entry.meta
    if meta.get("client_id"):
        return str(meta["client_id"])
    if meta.get("worker_id"):
        return f"worker:{meta['worker_id']}"
    return COMMISSION


# The ledger kinds of a worker's account that its owner sees on `billing.earnings`.
_EARNING_KIND = {
    models.LedgerEntryKind.WORKER_CREDIT: models.EarningKind.CREDIT,
    models.LedgerEntryKind.PAYOUT: models.EarningKind.PAYOUT,
    models.LedgerEntryKind.PAYOUT_REVERSAL: models.EarningKind.PAYOUT_REVERSAL,
}


def earning_records(entry: Entry, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `cocoon.billing.WorkerEarning` records of an entry's ledger records (`ledger_records`).

    Only the worker's own side: the amount, the request and the address, never the memo (which
    names the paying account). A credit's address is the one it was earned under; a payout's is
    the one whose earnings it pays.
    """
    meta = entry.meta
    address = meta.get("payout_address") or meta.get("earned_under")
    return [
        {
            "entry_id": record["entry_id"],
            "worker_id": record["account_id"].removeprefix(WORKER_ACCOUNT_PREFIX),
            "kind": _EARNING_KIND[record["kind"]],
            "amount_nanoton": record["available_delta_nanoton"],
            "request_id": record["request_id"],
            "payout_address": str(address) if address else None,
            "created_at": record["created_at"],
        }
        for record in records
        if record["account_kind"] == models.AccountKind.WORKER
        and record["kind"] in _EARNING_KIND
        and record["available_delta_nanoton"]
    ]


def touched(entry: Entry) -> set[str]:
    """The record accounts (`owner_of`) an entry concerns: its records' keys."""
    return {owner_of(a)[0] for a, _ in entry.postings} or {_subject(entry)}


def _record_kind(entry: Entry, kind: str) -> str:
    if entry.kind == "charge" and kind == "WORKER":
        return "WORKER_CREDIT"
    if entry.kind == "charge" and kind == "PLATFORM":
        return "COMMISSION"
    return _KIND.get(entry.kind, "ADJUSTMENT")


def memo_of(entry: Entry, seq: int) -> str:
    return json.dumps(
        {"v": MEMO_VERSION, "seq": seq, "entry": entry.to_dict()},
        sort_keys=True,
        separators=(",", ":"),
    )


def ledger_records(entry: Entry, seq: int) -> list[dict[str, Any]]:
    """The `cocoon.billing.LedgerEntry` records (Avro dicts) of one domain entry."""
    deltas: dict[str, dict[str, int]] = {}
    kinds: dict[str, str] = {}
    for account, amount in entry.postings:
        owner, kind, side = owner_of(account)
        deltas.setdefault(owner, {"available": 0, "held": 0})[side] += amount
        kinds[owner] = kind
    if not deltas:
        owner = _subject(entry)
        deltas[owner] = {"available": 0, "held": 0}
        kinds[owner] = account_kind(owner)
    memo = memo_of(entry, seq)
    request_id = entry.meta.get("request_id")
    return [
        {
            "entry_id": f"{entry.entry_id}@{owner}",
            "account_id": owner,
            "account_kind": kinds[owner],
            "kind": _record_kind(entry, kinds[owner]),
            "available_delta_nanoton": d["available"],
            "held_delta_nanoton": d["held"],
            "cause_id": entry.entry_id,
            "request_id": str(request_id) if request_id is not None else None,
            "memo": memo,
            "created_at": entry.at_ms,
        }
        for owner, d in deltas.items()
    ]


class LedgerRecordError(ValueError):
    """A `billing.ledger` record billing cannot turn back into an entry."""


def entry_from_record(value: Mapping[str, Any]) -> tuple[int, Entry]:
    """(sequence number, domain entry) from a decoded `LedgerEntry` record."""
    try:
        memo = json.loads(value["memo"])
        if memo.get("v") != MEMO_VERSION:
            raise LedgerRecordError(f"unknown ledger memo version {memo.get('v')!r}")
        return int(memo["seq"]), Entry.from_dict(memo["entry"])
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, LedgerRecordError):
            raise
        raise LedgerRecordError(f"ledger record {value.get('entry_id')!r}: {exc!r}") from None


def order_entries(found: Iterable[tuple[int, Entry]]) -> list[Entry]:
    """Entries once each (an entry has one record per owner account), in ledger order."""
    by_id: dict[str, tuple[int, Entry]] = {}
    for seq, entry in found:
        by_id.setdefault(entry.entry_id, (seq, entry))
    return [entry for _, entry in sorted(by_id.values(), key=lambda pair: pair[0])]


@dataclass(frozen=True)
class AccountState:
    available: int
    held: int
    last_entry_id: str
    entries_applied: int


class BalanceBook:
    """What `billing.balances` says per record account: derived from the ledger, per entry."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}
        self._count: dict[str, int] = {}

    def snapshot(self) -> dict[str, Any]:
        return {"last": dict(self._last), "count": dict(self._count)}

    @classmethod
    def restored(cls, state: Mapping[str, Any]) -> BalanceBook:
        book = cls()
        book._last = dict(state["last"])
        book._count = dict(state["count"])
        return book

    def applied(self, entry: Entry) -> set[str]:
        """Note that `entry` was applied; the record accounts it concerns."""
        owners = touched(entry)
        for owner in owners:
            self._last[owner] = entry.entry_id
            self._count[owner] = self._count.get(owner, 0) + 1
        return owners

    def state(self, ledger: Ledger, owner: str) -> AccountState:
        kind = account_kind(owner)
        if kind == "CLIENT":
            available = ledger.balance(f"client:{owner}")
            held = ledger.balance(f"holds:{owner}")
        else:
            available, held = ledger.balance(owner), 0
        return AccountState(available, held, self._last.get(owner, ""), self._count.get(owner, 0))

    def record(self, ledger: Ledger, owner: str, at_ms: int) -> dict[str, Any]:
        """The `cocoon.billing.Balance` record (Avro dict) of one record account."""
        s = self.state(ledger, owner)
        return {
            "account_id": owner,
            "account_kind": account_kind(owner),
            "available_nanoton": s.available,
            "held_nanoton": s.held,
            "last_entry_id": s.last_entry_id,
            "entries_applied": s.entries_applied,
            "updated_at": at_ms,
        }
