"""`/v1/models` from what the network knows: live attested workers, what their heartbeats
announce (capabilities, context length, coefficient) and the registry's price list."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cocoon.core.capabilities import announced
from cocoon.core.codec import models
from cocoon.core.holds import BPS_ONE, COEFFICIENT_ONE
from cocoon.core.registry_entries import (
    PRICE_FIELDS,
    PRICES_ENTRY_ID,
    WORKER_PREFIX,
    decimal_integer,
    worker_coefficient,
)
from cocoon.gateway.api.backend import ModelInfo
from cocoon.gateway.workers import WorkerDirectory

# The HTTP route of each endpoint, for messages.
ROUTES = {
    "chat.completions": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}
_ORDER = list(models.Capability)  # listed in the contract's order: chat, tools, embeddings


@dataclass(frozen=True)
class NetworkPrices:
    """The registry's price list (nanoTON per adjusted token, multipliers in basis points)
    and the coefficients it sets per worker (which win over the worker's own)."""

    price_per_token: int
    prompt_bps: int = BPS_ONE
    cached_bps: int = BPS_ONE
    completion_bps: int = BPS_ONE
    worker_coefficients: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_registry(cls, entries: Mapping[str, Mapping]) -> NetworkPrices | None:
        """From the folded registry (entry id -> entry with `attributes`); None without prices
        or when they do not parse (nothing listed beats a wrong price)."""
        entry = entries.get(PRICES_ENTRY_ID)
        try:
            attributes = entry["attributes"] if entry else None
            if not attributes:
                return None
            numbers = {k: decimal_integer(attributes[k]) for k in PRICE_FIELDS if k in attributes}
            coefficients = {
                key.removeprefix(WORKER_PREFIX): worker_coefficient(e["attributes"])
                for key, e in entries.items()
                if key.startswith(WORKER_PREFIX) and "coefficient" in e["attributes"]
            }
            return cls(
                price_per_token=numbers["price_per_token"],
                prompt_bps=numbers.get("prompt_bps", BPS_ONE),
                cached_bps=numbers.get("cached_bps", BPS_ONE),
                completion_bps=numbers.get("completion_bps", BPS_ONE),
                worker_coefficients=coefficients,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def per_token(self, coefficient: int) -> dict[str, float]:
        """nanoTON one token costs, by category, at `coefficient` (what billing charges)."""

        def price(bps: int) -> float:
            return self.price_per_token * coefficient * bps / (COEFFICIENT_ONE * BPS_ONE)

        return {
            "prompt": price(self.prompt_bps),
            "cached_prompt": price(self.cached_bps),
            "completion": price(self.completion_bps),
        }


def model_listing(workers: WorkerDirectory, prices: NetworkPrices | None) -> list[ModelInfo]:
    grouped: dict[str, list[str]] = {}
    for worker in workers.live_workers():
        for model in worker.models:
            grouped.setdefault(model, []).append(worker.worker_id)
    listing = []
    for model, worker_ids in sorted(grouped.items()):
        capabilities: set[str] = set()
        lengths, coefficients = [], []
        for worker_id in worker_ids:
            said = workers.announced(worker_id)
            capabilities |= said.capabilities if said else announced(None)
            if said and said.context_length:
                lengths.append(said.context_length)
            own = said.coefficient if said else COEFFICIENT_ONE
            registry = prices.worker_coefficients if prices else {}
            coefficients.append(registry.get(worker_id, own))
        cheapest = min(coefficients)
        listing.append(
            ModelInfo(
                id=model,
                attested_workers=len(worker_ids),
                min_coefficient=cheapest,
                capabilities=tuple(c.lower() for c in _ORDER if c in capabilities),
                context_length=min(lengths) if lengths else None,
                pricing=prices.per_token(cheapest) if prices else None,
            )
        )
    return listing
