"""What reached a payout address on chain, read through a toncenter v2 HTTP API.

Only `getTransactions` on the owner's own address, and only incoming transfers that carry
billing's payout comment (`cocoon payout <id>`, docs/gpu-owners.md). The worker-proxy cannot use
billing's client (services never import each other), and it needs only this much of it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import httpx

from cocoon.core.ton_address import raw_address

PAYOUT_COMMENT_PREFIX = "cocoon payout "  # billing's payout message comment
PAGE = 100


class ChainError(RuntimeError):
    """The TON API could not be read or answered something that is not a transaction list."""


@dataclass(frozen=True)
class ReceivedPayout:
    payout_id: str
    amount_nanoton: int
    utime: int
    tx_lt: int


def _comment(message: dict[str, Any]) -> str | None:
    data = message.get("msg_data") or {}
    if data.get("@type") != "msg.dataText":
        return None
    try:
        return base64.b64decode(data.get("text", ""), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _payout(tx: Any) -> ReceivedPayout | None:
    if not isinstance(tx, dict) or not isinstance(tx.get("in_msg"), dict):
        raise ChainError(f"malformed transaction: {str(tx)[:200]}")
    message = tx["in_msg"]
    comment = _comment(message)
    if not message.get("source") or not comment or not comment.startswith(PAYOUT_COMMENT_PREFIX):
        return None
    try:
        return ReceivedPayout(
            payout_id=comment.removeprefix(PAYOUT_COMMENT_PREFIX),
            amount_nanoton=int(message["value"]),
            utime=int(tx.get("utime", 0)),
            tx_lt=int(tx["transaction_id"]["lt"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ChainError(f"malformed payout transaction: {exc!r}") from None


async def received_payouts(
    api_url: str, address: str, *, api_key: str | None = None, max_pages: int = 50
) -> list[ReceivedPayout]:
    """Every billing payout that arrived at `address`, newest first (up to max_pages * 100)."""
    headers = {"X-API-Key": api_key} if api_key else {}
    found: list[ReceivedPayout] = []
    cursor: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=api_url.rstrip("/"), headers=headers) as client:
        for _ in range(max_pages):
            params = {"address": address, "limit": str(PAGE), **cursor}
            try:
                response = await client.get("/getTransactions", params=params, timeout=15)
                body = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise ChainError(f"TON API {api_url}: {exc}") from None
            if not isinstance(body, dict) or not body.get("ok"):
                raise ChainError(f"TON API {api_url}: {str(body)[:200]}")
            page = body.get("result")
            if not isinstance(page, list):
                raise ChainError(f"TON API {api_url}: result is not a list")
            found += [p for p in map(_payout, page) if p is not None]
            if len(page) < PAGE:
                break
            last = page[-1]["transaction_id"]
            # The next page starts at `last` again (toncenter's lt/hash cursor): deduplicated.
            cursor = {"lt": str(last["lt"]), "hash": str(last["hash"])}
    return _unique(found)


async def received_at(
    api_url: str, addresses: list[str], *, api_key: str | None = None
) -> list[ReceivedPayout]:
    """Every billing payout that arrived at any of `addresses` (each read once)."""
    found: list[ReceivedPayout] = []
    for address in dict.fromkeys(raw_address(a) for a in addresses):
        found += await received_payouts(api_url, address, api_key=api_key)
    return found


def _unique(payouts: list[ReceivedPayout]) -> list[ReceivedPayout]:
    by_lt = {p.tx_lt: p for p in payouts}
    return sorted(by_lt.values(), key=lambda p: p.tx_lt, reverse=True)
