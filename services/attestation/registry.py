"""The registry: what the network allows (COCOON's root contract, minus the chain).

Allowed image hashes, allowed MRTD/RTMR measurement sets, models with their hashes, accepted TCB
statuses, allowed advisories, and the models that require a GPU in confidential-computing mode.
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

REGISTRY_FORMAT = "cocoon.attestation.registry/1"


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


@dataclass
class Registry:
    image_hashes: set[str] = field(default_factory=set)
    measurements: list[MeasurementSet] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)  # name -> SHA-256 hex of the model id
    tcb_statuses: set[str] = field(default_factory=lambda: {"UpToDate"})
    advisories: set[str] = field(default_factory=set)
    gpu_cc_models: set[str] = field(default_factory=set)  # need verified NVIDIA CC evidence

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
