"""Prices, worker coefficients and payout addresses, mirrored from `attestation.registry`.

The registry (COCOON's root contract) carries them as POLICY entries next to the attestation
allow-lists; billing reads only these two and ignores the rest:

    prices:network   attributes setting=prices, price_per_token, worker_fee_per_token,
                     prompt_bps, cached_bps, completion_bps, reasoning_bps (decimal strings)
    worker:<id>      attributes setting=worker, coefficient, payout_address (optional: pays
                     the earnings made under a verdict that attests no address)
    banned-address:<raw address>   nothing is paid to it

The latest record per entry id is the state (a compacted topic); `allowed=false` or a tombstone
removes it. Until the registry holds a price list, the service's configured prices apply
(development networks). A malformed entry is logged and leaves the previous state in force.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from cocoon.billing.money import BillingError
from cocoon.billing.pricing import Prices
from cocoon.core.bus.broadcast import BroadcastRecord
from cocoon.core.registry_entries import (
    BANNED_ADDRESS_PREFIX,
    PRICE_FIELDS,
    PRICES_ENTRY_ID,
    REGISTRY_TOPIC,
    WORKER_PREFIX,
    decimal_integer,
    worker_coefficient,
)

__all__ = ["REGISTRY_TOPIC", "RegistryPrices"]

log = logging.getLogger(__name__)


class RegistryPrices:
    def __init__(self, defaults: Prices) -> None:
        self.defaults = defaults
        self._price_list: dict[str, int] | None = None
        self._coefficients: dict[str, int] = {}
        self._addresses: dict[str, str] = {}
        self._banned: set[str] = set()  # raw payout addresses
        self.prices = defaults

    def on_record(self, record: BroadcastRecord) -> bool:
        """Take one registry record; True when the prices in force changed."""
        key, value = record.key, record.value
        if key is not None and key.startswith(BANNED_ADDRESS_PREFIX):
            address = key.removeprefix(BANNED_ADDRESS_PREFIX)
            if value is not None and value.get("allowed"):
                self._banned.add(address)
            else:
                self._banned.discard(address)
            return False
        if key is None or not (key == PRICES_ENTRY_ID or key.startswith(WORKER_PREFIX)):
            return False
        present = value is not None and bool(value.get("allowed"))
        attributes: Mapping[str, Any] = (value or {}).get("attributes") or {}
        try:
            if key == PRICES_ENTRY_ID:
                self._price_list = _price_list(attributes) if present else None
            else:
                self._set_worker(key.removeprefix(WORKER_PREFIX), attributes if present else None)
            prices = self._build()
        except (BillingError, ValueError, TypeError) as exc:
            log.warning("registry entry %s not applied: %s", key, exc)
            return False
        changed = prices != self.prices
        self.prices = prices
        if changed:
            log.info("prices from the registry", extra={"entry": key})
        return changed

    def payout_address(self, worker_id: str) -> str | None:
        return self._addresses.get(worker_id)

    def banned(self, raw_address: str) -> bool:
        return raw_address in self._banned

    def _set_worker(self, worker_id: str, attributes: Mapping[str, Any] | None) -> None:
        if attributes is None:
            self._coefficients.pop(worker_id, None)
            self._addresses.pop(worker_id, None)
            return
        self._coefficients[worker_id] = worker_coefficient(attributes)
        address = str(attributes.get("payout_address") or "")
        if address:
            self._addresses[worker_id] = address
        else:
            self._addresses.pop(worker_id, None)

    def _build(self) -> Prices:
        base = self.defaults
        if self._price_list is not None:
            base = Prices(**self._price_list)  # validates (fee <= price, u32 factors, ...)
        return replace(base, worker_coefficients=dict(self._coefficients))


def _price_list(attributes: Mapping[str, Any]) -> dict[str, int]:
    missing = [f for f in PRICE_FIELDS if f not in attributes]
    if missing:
        raise ValueError(f"price list lacks {missing}")
    return {f: decimal_integer(attributes[f]) for f in PRICE_FIELDS}
