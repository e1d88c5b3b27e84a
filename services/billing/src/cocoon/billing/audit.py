"""Exact-money invariants over a ledger. An empty list means every nanoTON is accounted for.

The audit recomputes everything from the entries themselves: postings for balances, the facts in
each entry's meta (deposit amounts, charges, fees, payouts) for what the balances *should* be. A
bug that moves money without the matching fact, or records a fact without moving the money, shows
up as a difference here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from cocoon.billing.ledger import (
    _MAY_BE_NEGATIVE,
    COMMISSION,
    PAYOUTS_PENDING,
    TON_DEPOSITS,
    TON_PAYOUTS,
    UNCLAIMED,
    Entry,
    Ledger,
    client_account,
    entry_problem,
    holds_account,
    topup_account,
    worker_account,
)
from cocoon.billing.money import INT64_MAX


def audit(ledger: Ledger | Iterable[Entry], *, require_no_open_holds: bool = False) -> list[str]:
    entries = list(ledger)
    problems: list[str] = []
    balances: dict[str, int] = defaultdict(int)
    expected: dict[str, int] = defaultdict(int)
    open_holds: dict[str, tuple[str, int]] = {}
    open_grants: dict[str, list] = {}  # grant id -> [client, remaining]
    seen: set[str] = set()
    entries_by_id: dict[str, Entry] = {}
    owed: dict[tuple[str, str], int] = defaultdict(int)  # (worker, earned under) -> nanoTON

    for entry in entries:
        if entry.entry_id in seen:
            problems.append(f"entry id {entry.entry_id} appears twice")
        seen.add(entry.entry_id)
        problem = entry_problem(entry)
        if problem:
            problems.append(f"{entry.entry_id}: {problem}")
        for account, amount in entry.postings:
            balances[account] += amount
        _expect(entry, expected, open_holds, open_grants, problems)
        _follow_addresses(entry, entries_by_id, owed, problems)
        entries_by_id[entry.entry_id] = entry

    nonzero = {a: n for a, n in balances.items() if n}
    if isinstance(ledger, Ledger) and {a: n for a, n in ledger.balances().items() if n} != nonzero:
        problems.append("derived balances differ from a replay of the entries")
    if sum(balances.values()) != 0:
        problems.append(f"ledger does not sum to zero ({sum(balances.values())})")
    for account, amount in balances.items():
        if amount < 0 and account not in _MAY_BE_NEGATIVE:
            problems.append(f"{account} is negative ({amount})")
        if abs(amount) > INT64_MAX:
            problems.append(f"{account} exceeds int64")
    for account in sorted(set(balances) | set(expected)):
        if balances.get(account, 0) != expected.get(account, 0):
            problems.append(
                f"{account}: balance {balances.get(account, 0)} != expected "
                f"{expected.get(account, 0)} from deposits/charges/fees/payouts"
            )
    if require_no_open_holds and open_holds:
        problems.append(f"{len(open_holds)} hold(s) left open: {sorted(open_holds)[:5]}")
    if require_no_open_holds and open_grants:
        problems.append(f"{len(open_grants)} grant(s) left open: {sorted(open_grants)[:5]}")
    return problems


def _follow_addresses(
    entry: Entry,
    earlier: dict[str, Entry],
    owed: dict[tuple[str, str], int],
    problems: list[str],
) -> None:
    """Each receipt's fee is owed to the address it was earned under; a payout may draw only on
    what is owed under the address it names, so earnings can never be paid elsewhere."""
    m = entry.meta
    if entry.kind == "charge":
        owed[m["worker_id"], m.get("payout_address", "")] += m["worker_fee"]
    elif entry.kind == "payout":
        key = (m["worker_id"], m.get("earned_under", ""))
        owed[key] -= m["amount"]
        if owed[key] < 0:
            problems.append(
                f"{entry.entry_id}: pays {m['amount']} of earnings under "
                f"{key[1] or 'no attested address'}, more than were earned there"
            )
    elif entry.kind == "payout_reversed":
        start = earlier.get(entry.entry_id.replace("payout-reversed:", "payout:", 1))
        under = start.meta.get("earned_under", "") if start is not None else ""
        owed[m["worker_id"], under] += m["amount"]


def _expect(
    entry: Entry,
    expected: dict[str, int],
    open_holds: dict[str, tuple[str, int]],
    open_grants: dict[str, list],
    problems: list[str],
) -> None:
    """Add what the entry's facts say each account should gain; check per-entry arithmetic."""
    m = entry.meta
    kind = entry.kind
    if kind == "deposit":
        amount = m["amount"]
        target = client_account(m["client_id"]) if m.get("client_id") else UNCLAIMED
        expected[TON_DEPOSITS] -= amount
        expected[target] += amount
    elif kind == "topup":
        amount = m["amount"]
        expected[topup_account(m["source"])] -= amount
        expected[client_account(m["client_id"])] += amount
    elif kind == "refund":
        amount = m["amount"]
        expected[client_account(m["client_id"])] -= amount
        expected[topup_account(m["source"])] += amount
    elif kind == "claim":
        amount = m["amount"]
        expected[UNCLAIMED] -= amount
        expected[client_account(m["client_id"])] += amount
    elif kind == "grant":
        client, amount = m["client_id"], m["amount"]
        expected[client_account(client)] -= amount
        expected[holds_account(client)] += amount
        open_grants[m["grant_id"]] = [client, amount]
    elif kind == "grant_closed":
        grant = open_grants.pop(m["grant_id"], None)
        if grant is None:
            problems.append(f"{entry.entry_id}: closes a grant that is not open")
            return
        if m["returned"] != grant[1]:
            problems.append(f"{entry.entry_id}: returns {m['returned']}, {grant[1]} was left")
        expected[holds_account(grant[0])] -= m["returned"]
        expected[client_account(grant[0])] += m["returned"]
    elif kind == "hold":
        # Moves money between a client's own two accounts: its total is unchanged.
        client, amount = m["client_id"], m["amount"]
        open_holds[m["request_id"]] = (client, amount)
        grant = open_grants.get(m["grant_id"]) if m.get("grant_id") else None
        if m.get("grant_id") and (grant is None or grant[0] != client):
            problems.append(f"{entry.entry_id}: carved out of a grant that is not open")
        elif grant is not None:
            grant[1] -= amount  # the grant's funds are held already
            if grant[1] < 0:
                problems.append(f"{entry.entry_id}: overdraws grant {m['grant_id']}")
        else:
            expected[client_account(client)] -= amount
            expected[holds_account(client)] += amount
    elif kind in ("charge", "release"):
        held = open_holds.pop(m["request_id"], None)
        if held is None:
            problems.append(f"{entry.entry_id}: closes a hold that is not open")
            return
        client, amount = held
        charge = m.get("charge", 0)
        expected[holds_account(client)] -= amount
        expected[client_account(client)] += amount - charge
        if kind == "charge":
            if charge != m["worker_fee"] + m["commission"]:
                problems.append(f"{entry.entry_id}: charge != worker fee + commission")
            if charge + m["released"] != amount:
                problems.append(f"{entry.entry_id}: charge + released != hold")
            expected[worker_account(m["worker_id"])] += m["worker_fee"]
            expected[COMMISSION] += m["commission"]
    elif kind == "payout":
        expected[worker_account(m["worker_id"])] -= m["amount"]
        expected[PAYOUTS_PENDING] += m["amount"]
    elif kind == "payout_confirmed":
        expected[PAYOUTS_PENDING] -= m["amount"]
        expected[TON_PAYOUTS] += m["amount"]
    elif kind == "payout_reversed":
        expected[PAYOUTS_PENDING] -= m["amount"]
        expected[worker_account(m["worker_id"])] += m["amount"]
    elif entry.postings:
        problems.append(f"{entry.entry_id}: unknown kind {kind} moves money")
