"""Deposit watcher: credit each incoming transfer to the account named in its comment, once.

* Exactly once: the ledger entry id is `deposit:<lt>:<tx hash>`, so re-polling, overlapping pages
  or a restart that re-reads the whole history can never credit a transaction twice.
* Confirmations: toncenter v2 transactions carry no block number, so a transaction counts as
  confirmed once the masterchain has advanced `confirmations` blocks past the poll that first saw
  it. A restart forgets first sightings and waits again: slower, never wrong.
* Never lost: an empty, binary, malformed or unknown-account comment credits `unclaimed` with
  the reason; an operator can later `claim_unclaimed` it to the right client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cocoon.billing.engine import BillingEngine
from cocoon.billing.money import BillingError, check_id
from cocoon.billing.ton.address import parse_address
from cocoon.billing.ton.api import TonApi, TonTransaction
from cocoon.core.codec.timestamps import now_millis


@dataclass(frozen=True, slots=True)
class DepositOutcome:
    deposit_id: str
    amount: int
    client_id: str | None  # None: held as unclaimed
    reason: str  # why unclaimed ("" when credited)
    credited_now: bool  # False when it was already in the ledger


def account_from_comment(comment: str | None, body_kind: str) -> tuple[str | None, str]:
    """(client id, "") when the comment names an account id, else (None, reason)."""
    if body_kind == "binary":
        return None, "body is not a text comment"
    if comment is None or not comment.strip():
        return None, "no comment"
    text = comment.strip()
    try:
        return check_id(text, "deposit comment"), ""
    except BillingError:
        return None, f"comment is not an account id: {text[:80]!r}"


class DepositWatcher:
    def __init__(
        self,
        api: TonApi,
        engine: BillingEngine,
        deposit_address: str,
        *,
        confirmations: int = 3,
        now_ms: Callable[[], int] = now_millis,
    ) -> None:
        if confirmations < 0:
            raise BillingError("confirmations must not be negative")
        self._api = api
        self._engine = engine
        self.address = parse_address(deposit_address)
        self._confirmations = confirmations
        self._now_ms = now_ms
        self._first_seen: dict[str, int] = {}
        # Deposits are credited in lt order, so the newest credited one bounds what is done.
        self.cursor_lt = engine.deposit_cursor(self.address)

    async def poll(self) -> list[DepositOutcome]:
        """One pass: credit every confirmed new transaction, oldest first."""
        mc_seqno = await self._api.get_masterchain_seqno()
        outcomes: list[DepositOutcome] = []
        txs = await self._api.iter_transactions_since(self.address, self.cursor_lt)
        for tx in txs:
            self._first_seen.setdefault(tx.tx_id, mc_seqno)
        for tx in txs:
            if mc_seqno - self._first_seen[tx.tx_id] < self._confirmations:
                break  # keep lt order: nothing newer is credited before this one
            outcome = self._credit(tx)
            if outcome is not None:
                outcomes.append(outcome)
            self.cursor_lt = tx.lt
            self._first_seen.pop(tx.tx_id, None)
        return outcomes

    def _credit(self, tx: TonTransaction) -> DepositOutcome | None:
        msg = tx.in_msg
        if msg is None or msg.source is None or msg.value == 0 or msg.source == self.address:
            return None  # not a deposit: the wallet's own operations or self-transfers
        if any(out.destination == msg.source for out in tx.out_msgs):
            return None  # bounced back to the sender (e.g. bounceable to an undeployed wallet)
        client_id, reason = account_from_comment(msg.comment, msg.body_kind)
        if client_id is not None and not self._engine.has_account(client_id):
            client_id, reason = None, f"unknown account {client_id!r}"
        credited = self._engine.credit_deposit(
            tx.tx_id,
            msg.value,
            client_id,
            at_ms=tx.utime * 1000 if tx.utime else self._now_ms(),
            note=reason,
            source=msg.source,
            source_address=self.address,
        )
        return DepositOutcome(f"deposit:{tx.tx_id}", msg.value, client_id, reason, credited)
