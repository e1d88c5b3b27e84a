"""The registry: what the network allows (COCOON's root contract, minus the chain).

Allowed image hashes, allowed MRTD/RTMR measurement sets, models with their hashes, accepted TCB
statuses, allowed advisories, the models that require a GPU in confidential-computing mode, and,
as COCOON's root contract does, the network's prices and each worker's price coefficient and
payout address (read by billing; they never change a verdict).
Here it is a plain value with a JSON file form (export and import); the Kafka compacted-topic
mirror is `registry_topic`.
`Registry.apply(policy)` yields the policy a verifier uses.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cocoon.attestation.policy import TCB_STATUSES, MeasurementSet, Policy, PolicyError
from cocoon.core.registry_entries import PRICE_FIELDS
from cocoon.core.ton_address import TonAddressError, raw_address

REGISTRY_FORMAT = "cocoon.attestation.registry/1"
_MAX_PRICE = 10**15  # far above any sane price, far below int64 overflow in cost arithmetic


class RegistryError(ValueError):
    """An invalid registry document or change."""


def _hex(value: str, size: int, what: str) -> str:
    v = value.lower()
    try:
        ok = len(bytes.fromhex(v)) == size
    except ValueError:
        ok = False
    if not ok:
        raise RegistryError(f"{what} must be {size} bytes of hex")
    return v


def _bounded_int(value: Any, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise RegistryError(f"{what} must be an integer, got {value!r}") from None
    if (
        isinstance(value, bool)
        or str(number) != str(value).strip()
        or not 0 <= number <= _MAX_PRICE
    ):
        raise RegistryError(f"{what} must be an integer in 0..{_MAX_PRICE}, got {value!r}")
    return number


def _address(text: str) -> str:
    try:
        return raw_address(text)
    except TonAddressError as exc:
        raise RegistryError(f"payout address: {exc}") from None


@dataclass
class Registry:
    image_hashes: set[str] = field(default_factory=set)
    measurements: list[MeasurementSet] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)  # name -> SHA-256 hex of the model id
    tcb_statuses: set[str] = field(default_factory=lambda: {"UpToDate"})
    advisories: set[str] = field(default_factory=set)
    gpu_cc_models: set[str] = field(default_factory=set)  # need verified NVIDIA CC evidence
    prices: dict[str, int] = field(default_factory=dict)  # PRICE_FIELDS, all or none
    workers: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> coefficient, address
    banned_addresses: set[str] = field(default_factory=set)  # raw TON payout addresses

    def ban_address(self, address: str) -> None:
        """Refuse workers that attest this payout address, and pay nothing to it."""
        self.banned_addresses.add(_address(address))

    def unban_address(self, address: str) -> bool:
        raw = _address(address)
        present = raw in self.banned_addresses
        self.banned_addresses.discard(raw)
        return present

    def set_prices(self, values: dict[str, Any]) -> None:
        """Set the whole price list (every PRICE_FIELDS key, integers)."""
        missing = [f for f in PRICE_FIELDS if f not in values]
        unknown = sorted(set(values) - set(PRICE_FIELDS))
        if missing or unknown:
            raise RegistryError(
                f"prices need exactly {list(PRICE_FIELDS)}; missing {missing}, unknown {unknown}"
            )
        prices = {f: _bounded_int(values[f], f) for f in PRICE_FIELDS}
        if prices["price_per_token"] == 0:
            raise RegistryError("price_per_token must be positive")
        if prices["worker_fee_per_token"] > prices["price_per_token"]:
            raise RegistryError(
                "worker_fee_per_token exceeds price_per_token (negative commission)"
            )
        self.prices = prices

    def set_worker(self, worker_id: str, *, coefficient: int, payout_address: str = "") -> None:
        """A worker's price coefficient (1000 = 1.0x) and the TON address its earnings go to."""
        if not worker_id:
            raise RegistryError("worker id is empty")
        coefficient = _bounded_int(coefficient, "coefficient")
        if coefficient == 0:
            raise RegistryError("coefficient must be positive")
        entry = {"coefficient": str(coefficient)}
        if payout_address:
            entry["payout_address"] = payout_address  # checked by billing before any payout
        self.workers[worker_id] = entry

    def remove_worker(self, worker_id: str) -> bool:
        return self.workers.pop(worker_id, None) is not None

    def add_image(self, image_hash: str) -> None:
        self.image_hashes.add(_hex(image_hash, 32, "image hash"))

    def remove_image(self, image_hash: str) -> bool:
        h = image_hash.lower()
        present = h in self.image_hashes
        self.image_hashes.discard(h)
        return present

    def add_measurements(self, m: MeasurementSet) -> None:
        if m not in self.measurements:
            self.measurements.append(m)

    def remove_measurements(self, m: MeasurementSet) -> bool:
        present = m in self.measurements
        self.measurements = [x for x in self.measurements if x != m]
        return present

    def add_model(self, name: str, model_hash: str) -> None:
        if not name:
            raise RegistryError("model name is empty")
        self.models[name] = _hex(model_hash, 32, "model hash")

    def remove_model(self, name: str) -> bool:
        return self.models.pop(name, None) is not None

    def allow_tcb(self, status: str) -> None:
        if status not in TCB_STATUSES:
            raise RegistryError(f"unknown TCB status {status!r}; known: {sorted(TCB_STATUSES)}")
        self.tcb_statuses.add(status)

    def disallow_tcb(self, status: str) -> None:
        self.tcb_statuses.discard(status)

    def require_gpu(self, model: str) -> None:
        if not model:
            raise RegistryError("model name is empty")
        self.gpu_cc_models.add(model)

    def no_require_gpu(self, model: str) -> bool:
        present = model in self.gpu_cc_models
        self.gpu_cc_models.discard(model)
        return present

    def apply(self, policy: Policy) -> Policy:
        """`policy` with this registry's allow-lists (roots and freshness stay the policy's).
        GPU requirements add to the policy's own `require_gpu_cc_models`."""
        try:
            return replace(
                policy,
                allowed_image_hashes=frozenset(self.image_hashes),
                allowed_measurements=tuple(self.measurements),
                accepted_tcb_statuses=frozenset(self.tcb_statuses),
                allowed_advisories=frozenset(self.advisories),
                allowed_models=frozenset(self.models),
                require_gpu_cc_models=policy.require_gpu_cc_models | frozenset(self.gpu_cc_models),
            )
        except PolicyError as exc:
            raise RegistryError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REGISTRY_FORMAT,
            "image_hashes": sorted(self.image_hashes),
            "measurements": [m.to_dict() for m in self.measurements],
            "models": dict(sorted(self.models.items())),
            "tcb_statuses": sorted(self.tcb_statuses),
            "advisories": sorted(self.advisories),
            "gpu_cc_models": sorted(self.gpu_cc_models),
            "prices": dict(self.prices),
            "workers": {w: dict(v) for w, v in sorted(self.workers.items())},
            "banned_addresses": sorted(self.banned_addresses),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Registry:
        if not isinstance(d, dict) or d.get("format") != REGISTRY_FORMAT:
            raise RegistryError(f"not a {REGISTRY_FORMAT} document")
        reg = cls(tcb_statuses=set())
        try:
            for h in d.get("image_hashes", []):
                reg.add_image(h)
            for m in d.get("measurements", []):
                reg.add_measurements(MeasurementSet.from_dict(m))
            for name, h in d.get("models", {}).items():
                reg.add_model(name, h)
            for s in d.get("tcb_statuses", ["UpToDate"]):
                reg.allow_tcb(s)
            reg.advisories = {str(a) for a in d.get("advisories", [])}
            for m in d.get("gpu_cc_models", []):
                reg.require_gpu(str(m))
            if d.get("prices"):
                reg.set_prices(d["prices"])
            for worker_id, w in d.get("workers", {}).items():
                reg.set_worker(
                    worker_id,
                    coefficient=w.get("coefficient", 1000),
                    payout_address=w.get("payout_address", ""),
                )
            for address in d.get("banned_addresses", []):
                reg.ban_address(address)
        except (PolicyError, AttributeError, TypeError) as exc:
            raise RegistryError(f"malformed registry: {exc}") from None
        return reg

    @classmethod
    def load(cls, path: str | Path) -> Registry:
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except ValueError as exc:
            raise RegistryError(f"cannot read registry {path}: {exc}") from None

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
