"""The registry entries that more than one service reads: the contract, not the logic.

`attestation.registry` (a compacted topic, key = entry id) is written by `cocoon registry` and
folded by the attestation service; billing reads the price list and the worker entries from it.
Both sides name those entries through this module so the ids and attribute names cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping

from cocoon.core.contracts import Topic

REGISTRY_TOPIC = Topic.ATTESTATION_REGISTRY

# POLICY entries carry their meaning in the `setting` attribute.
SETTING = "setting"
PRICES_SETTING = "prices"
PRICES_ENTRY_ID = "prices:network"
WORKER_SETTING = "worker"
WORKER_PREFIX = "worker:"  # + worker id; attributes coefficient, payout_address (optional)
# A banned payout address (raw form): verdicts attesting it are refused and revoked, and billing
# pays nothing to it. allowed=true means banned, as for gpu-cc entries.
BANNED_ADDRESS_SETTING = "banned_payout_address"
BANNED_ADDRESS_PREFIX = "banned-address:"  # + raw address

# The price list's attributes, integers written as decimal strings: nanoTON per adjusted token
# for the client and for the worker, and the per-category multipliers in basis points.
PRICE_FIELDS = (
    "price_per_token",
    "worker_fee_per_token",
    "prompt_bps",
    "cached_bps",
    "completion_bps",
    "reasoning_bps",
)


def worker_entry_id(worker_id: str) -> str:
    return WORKER_PREFIX + worker_id


def banned_address_entry_id(raw_address: str) -> str:
    return BANNED_ADDRESS_PREFIX + raw_address


def decimal_integer(text: object) -> int:
    """A registry attribute holding an integer, written as a plain decimal string."""
    value = int(str(text).strip())
    if str(value) != str(text).strip():
        raise ValueError(f"{text!r} is not a plain decimal integer")
    return value


def worker_coefficient(attributes: Mapping[str, object]) -> int:
    """The price coefficient of a `worker:<id>` entry (1000 = 1.0x, the default)."""
    return decimal_integer(attributes.get("coefficient", "1000"))
