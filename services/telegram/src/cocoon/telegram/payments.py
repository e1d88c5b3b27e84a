"""Telegram Stars top-ups: the invoice, the pre-checkout check, the credit it becomes, and the
records of a refund (refunds.py acts on billing's answer).

A successful payment becomes one `billing.topups` record whose id is derived from Telegram's
`telegram_payment_charge_id`: however often Telegram delivers the update (or the bot restarts
between receiving it and acknowledging it), billing credits the payment once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cocoon.core.codec import models

STARS_CURRENCY = "XTR"
REFUND_CALLBACK_PREFIX = "refund:"
PAYLOAD_PREFIX = "topup:"


PublishTopUp = Callable[[models.TopUp], Awaitable[None]]


@dataclass(frozen=True)
class StarsOffer:
    stars: int
    nanoton: int


def offers(packs: list[int], nanoton_per_star: int) -> list[StarsOffer]:
    return [StarsOffer(stars, stars * nanoton_per_star) for stars in packs]


def invoice_payload(account_id: str, stars: int) -> str:
    return f"{PAYLOAD_PREFIX}{account_id}:{stars}"


def parse_payload(payload: str) -> tuple[str, int] | None:
    """(account, stars) of an invoice this bot made, else None."""
    if not payload.startswith(PAYLOAD_PREFIX):
        return None
    account, _, stars = payload.removeprefix(PAYLOAD_PREFIX).rpartition(":")
    if not account or not stars.isdigit() or int(stars) <= 0:
        return None
    return account, int(stars)


def precheck_problem(
    payload: str, currency: str, total_amount: int, account_id: str, packs: list[int]
) -> str | None:
    """Why a pre-checkout query must be refused (shown to the user), or None to accept."""
    parsed = parse_payload(payload)
    if currency != STARS_CURRENCY or parsed is None:
        return "This invoice is not one of ours."
    account, stars = parsed
    if account != account_id:
        return "This invoice was made for another account."
    if stars != total_amount or stars not in packs:
        return "This offer is no longer available; use /topup again."
    return None


def topup_id(charge_id: str) -> str:
    # Billing ids allow no ':' and Telegram's charge ids are opaque: a hash is stable and safe.
    return "stars-" + hashlib.sha256(charge_id.encode()).hexdigest()[:32]


def stars_topup(account_id: str, charge_id: str, stars: int, nanoton_per_star: int) -> models.TopUp:
    return models.TopUp(
        topup_id=topup_id(charge_id),
        account_id=account_id,
        amount_nanoton=stars * nanoton_per_star,
        source="TELEGRAM_STARS",
        paid_amount=stars,
        reference=charge_id,
        created_at=datetime.now(UTC),
    )


def trial_topup(account_id: str, nanoton: int) -> models.TopUp:
    """The operator's free trial: once per account ever (the id is the account's)."""
    return models.TopUp(
        topup_id=f"trial-{account_id}",
        account_id=account_id,
        amount_nanoton=nanoton,
        source="TRIAL",
        paid_amount=0,
        reference="",
        created_at=datetime.now(UTC),
    )


def refund_ask(topup_id: str, account_id: str) -> models.TopUp:
    return models.TopUp(
        topup_id=topup_id,
        account_id=account_id,
        amount_nanoton=0,
        source="TELEGRAM_STARS",
        paid_amount=0,
        reference="",
        created_at=datetime.now(UTC),
        kind="REFUND",
    )


def restored_credit(refund: models.Refund) -> models.TopUp:
    """The credit given back when Telegram will not refund: the same payment, so it can be
    asked for again; its id derives from the refunded one, so it is credited once."""
    return models.TopUp(
        topup_id=f"{refund.topup_id}-restored",
        account_id=refund.account_id,
        amount_nanoton=refund.amount_nanoton,
        source="TELEGRAM_STARS",
        paid_amount=refund.paid_amount,
        reference=refund.reference,
        created_at=datetime.now(UTC),
    )
