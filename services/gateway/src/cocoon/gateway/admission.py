"""Admission against grants: the gateway admits a request itself when billing already holds
funds for it, so no billing round trip sits on the request path (docs/billing-service.md).

Billing gives this gateway instance a grant for an account when a request asks for one
(`grant_ask_requests`). While a grant is usable, each request of that account carves its hold out
of the grant here, with the same formula and prices billing uses (`cocoon.core.holds`), and goes
straight to the scheduler with the grant's id; billing carves the same hold when it reads the
request. A request no grant can fund takes the ordinary path (billing decides), and hands back
a grant it could not use, so billing returns that remainder before deciding on the balance.
The state is this process's own: a restarted gateway has a new id and no grants, and billing
closes the old ones when their time is up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cocoon.core.codec.timestamps import epoch_millis, now_millis
from cocoon.core.holds import max_hold_nanoton

SWEEP_EVERY = 1024  # admissions between sweeps of idle accounts


@dataclass(frozen=True, slots=True)
class Admission:
    grant_id: str | None  # funded by this grant: placed without waiting for billing
    ask_requests: int  # ask billing for a new grant worth this many holds like this one
    return_grant_id: str | None  # a grant of ours billing should close before deciding


@dataclass(slots=True)
class _Grant:
    grant_id: str
    remaining: int
    price_per_token: int
    max_bps: int
    usable_until_ms: int


@dataclass(slots=True)
class _Account:
    grants: list[_Grant] = field(default_factory=list)  # oldest first
    asked_until_ms: int = 0  # an ask is outstanding (or was refused) until then


class AdmissionGrants:
    def __init__(
        self,
        gateway_id: str,
        *,
        ask_requests: int = 32,
        refill_below_requests: int = 8,
        margin_ms: int = 1_000,
        ask_timeout_ms: int = 5_000,
        clock: Callable[[], int] = now_millis,
    ) -> None:
        self.gateway_id = gateway_id
        self.ask_requests = ask_requests
        self.refill_below_requests = refill_below_requests
        # Stop using a grant this long before billing's end for it: billing closes it only once
        # it has read our requests past that end, and a request sent right at it could be late.
        self.margin_ms = margin_ms
        self.ask_timeout_ms = ask_timeout_ms
        self._clock = clock
        self._accounts: dict[str, _Account] = {}
        self._admitted = 0

    def admit(
        self, account_id: str, *, max_tokens: int, prompt_size: int, max_coefficient: int
    ) -> Admission:
        """Carve the request's hold out of a usable grant, or say it must go to billing."""
        now = self._clock()
        self._admitted += 1
        if self._admitted % SWEEP_EVERY == 0:
            self._forget_idle(now)
        account = self._accounts.setdefault(account_id, _Account())
        account.grants = [g for g in account.grants if g.usable_until_ms - self.margin_ms > now]
        chosen: _Grant | None = None
        short: _Grant | None = None
        amount = 0
        for grant in account.grants:
            amount = max_hold_nanoton(
                max_tokens, prompt_size, grant.price_per_token, grant.max_bps, max_coefficient
            )
            if amount <= grant.remaining:
                chosen = grant
                break
            short = short or grant
        if chosen is not None:
            chosen.remaining -= amount
        if short is not None:
            account.grants.remove(short)  # too little left for requests like this one
        left = sum(g.remaining for g in account.grants)
        ask = 0
        running_low = chosen is None or left < self.refill_below_requests * amount
        if running_low and account.asked_until_ms <= now:
            ask = self.ask_requests
            account.asked_until_ms = now + self.ask_timeout_ms
        return Admission(
            grant_id=chosen.grant_id if chosen else None,
            ask_requests=ask,
            return_grant_id=short.grant_id if short else None,
        )

    def on_record(self, value: dict[str, Any]) -> None:
        """A `billing.grants` record (every gateway reads them all; only ours count)."""
        if value.get("gateway_id") != self.gateway_id:
            return
        account = self._accounts.setdefault(value["account_id"], _Account())
        status = value["status"]
        if status == "GRANTED":
            if all(g.grant_id != value["grant_id"] for g in account.grants):
                account.grants.append(
                    _Grant(
                        grant_id=value["grant_id"],
                        remaining=value["amount_nanoton"],
                        price_per_token=value["price_per_token"],
                        max_bps=value["max_bps"],
                        usable_until_ms=epoch_millis(value["usable_until"]),
                    )
                )
            account.asked_until_ms = 0
        elif status == "REFUSED":
            # Not enough funds for a grant: keep to the ordinary path for a while.
            account.asked_until_ms = self._clock() + self.ask_timeout_ms
        elif status == "CLOSED":
            account.grants = [g for g in account.grants if g.grant_id != value["grant_id"]]

    def _forget_idle(self, now: int) -> None:
        """Drop accounts with nothing usable and no ask outstanding (memory stays bounded)."""
        for account_id, account in list(self._accounts.items()):
            usable = any(g.usable_until_ms - self.margin_ms > now for g in account.grants)
            if not usable and account.asked_until_ms <= now:
                del self._accounts[account_id]

    def tracked_accounts(self) -> int:
        return len(self._accounts)

    def remaining(self, account_id: str) -> int:
        account = self._accounts.get(account_id)
        return sum(g.remaining for g in account.grants) if account else 0
