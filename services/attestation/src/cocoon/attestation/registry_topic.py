"""The registry on Kafka: the compacted `attestation.registry` topic, COCOON's root contract.

One record per allowed thing, keyed by its entry id; the latest record per id is the state and
`allowed=false` takes a thing out (it stays on the topic so every reader learns of the removal):

    image:<sha256 hex>               IMAGE         an allowed image hash
    measurements:<sha256 hex>        MEASUREMENTS  attributes mrtd, rtmr0..3 (hex); the id is
                                                   SHA-256 over MRTD ‖ RTMR0..3
    model:<name>                     MODEL         attributes sha256 (the model's hash)
    tcb:<status>                     TCB_STATUS    an accepted TCB status (UpToDate unless
                                                   tcb:UpToDate says allowed=false)
    advisory:<id>                    ADVISORY      an allow-listed advisory
    gpu-cc:<model>                   POLICY        attributes setting=require_gpu_cc: the model
                                                   needs verified GPU CC evidence
    prices:network                   POLICY        attributes setting=prices and every
                                                   registry.PRICE_FIELDS value (decimal strings)
    worker:<worker id>               POLICY        attributes setting=worker, coefficient,
                                                   payout_address (optional)
    banned-address:<raw address>     POLICY        attributes setting=banned_payout_address:
                                                   verdicts attesting it are refused, billing
                                                   pays nothing to it

`version` is the registry version after the change (the writer's last seen version + 1).
For `gpu-cc:` entries `allowed=true` means "required" and for `banned-address:` "banned";
`allowed=false` lifts the requirement or the ban, which loosens the policy and so revokes nothing.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cocoon.attestation.policy import MeasurementSet, PolicyError
from cocoon.attestation.registry import Registry, RegistryError
from cocoon.attestation.registry_mirror import CompactedMirror
from cocoon.core.bus import BusProducer
from cocoon.core.codec import models
from cocoon.core.registry_entries import (
    BANNED_ADDRESS_SETTING,
    PRICES_ENTRY_ID,
    PRICES_SETTING,
    REGISTRY_TOPIC,
    WORKER_SETTING,
    banned_address_entry_id,
    worker_entry_id,
)

GPU_CC_SETTING = "require_gpu_cc"  # the POLICY entries' `setting` attribute


def gpu_cc_entry_id(model: str) -> str:
    return f"gpu-cc:{model}"


@dataclass(frozen=True)
class Entry:
    """The part of a RegistryEntry that says what is allowed."""

    entry_id: str
    kind: str
    subject: str
    allowed: bool
    attributes: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def measurement_id(m: MeasurementSet) -> str:
    return hashlib.sha256(m.mrtd + b"".join(m.rtmrs)).hexdigest()


def entries_of(reg: Registry) -> dict[str, Entry]:
    """Every allowed thing in `reg` as an entry, by entry id."""
    out = [Entry(f"image:{h}", "IMAGE", h, True) for h in reg.image_hashes]
    for m in reg.measurements:
        mid = measurement_id(m)
        out.append(Entry(f"measurements:{mid}", "MEASUREMENTS", mid, True, m.to_dict()))
    for name, digest in reg.models.items():
        out.append(Entry(f"model:{name}", "MODEL", name, True, {"sha256": digest}))
    out += [Entry(f"tcb:{s}", "TCB_STATUS", s, True) for s in reg.tcb_statuses]
    out += [Entry(f"advisory:{a}", "ADVISORY", a, True) for a in reg.advisories]
    out += [
        Entry(gpu_cc_entry_id(m), "POLICY", m, True, {"setting": GPU_CC_SETTING})
        for m in reg.gpu_cc_models
    ]
    if reg.prices:
        attributes = {"setting": PRICES_SETTING, **{k: str(v) for k, v in reg.prices.items()}}
        out.append(Entry(PRICES_ENTRY_ID, "POLICY", "network", True, attributes))
    out += [
        Entry(worker_entry_id(w), "POLICY", w, True, {"setting": WORKER_SETTING, **attrs})
        for w, attrs in reg.workers.items()
    ]
    out += [
        Entry(banned_address_entry_id(a), "POLICY", a, True, {"setting": BANNED_ADDRESS_SETTING})
        for a in reg.banned_addresses
    ]
    return {e.entry_id: e for e in out}


def diff(old: Registry, new: Registry) -> list[Entry]:
    """Entries that turn `old` into `new`: additions and changes, then removals."""
    before, after = entries_of(old), entries_of(new)
    changed = [
        e
        for eid, e in sorted(after.items())
        if eid not in before or before[eid].attributes != e.attributes
    ]
    removed = [
        Entry(eid, e.kind, e.subject, False, e.attributes)
        for eid, e in sorted(before.items())
        if eid not in after
    ]
    # "UpToDate" is accepted when no entry mentions it: an explicit removal must be written.
    return changed + removed


def apply_entry(reg: Registry, entry: Entry) -> None:
    """Fold one entry into `reg` (the latest entry per id wins; call in topic order)."""
    try:
        allow, subject = entry.allowed, entry.subject
        if entry.kind == "IMAGE":
            _ = reg.add_image(subject) if allow else reg.remove_image(subject)
        elif entry.kind == "MEASUREMENTS":
            m = MeasurementSet.from_dict(entry.attributes)
            _ = reg.add_measurements(m) if allow else reg.remove_measurements(m)
        elif entry.kind == "MODEL":
            _ = (
                reg.add_model(subject, entry.attributes.get("sha256", ""))
                if allow
                else reg.remove_model(subject)
            )
        elif entry.kind == "TCB_STATUS":
            _ = reg.allow_tcb(subject) if allow else reg.disallow_tcb(subject)
        elif entry.kind == "ADVISORY":
            _ = reg.advisories.add(subject) if allow else reg.advisories.discard(subject)
        elif entry.kind == "POLICY":
            _apply_policy(reg, entry)
        else:
            raise RegistryError(f"unknown registry entry kind {entry.kind!r}")
    except PolicyError as exc:
        raise RegistryError(str(exc)) from None


def _apply_policy(reg: Registry, entry: Entry) -> None:
    setting, subject, allow = entry.attributes.get("setting"), entry.subject, entry.allowed
    if setting == GPU_CC_SETTING and entry.entry_id == gpu_cc_entry_id(subject):
        _ = reg.require_gpu(subject) if allow else reg.no_require_gpu(subject)
    elif setting == PRICES_SETTING and entry.entry_id == PRICES_ENTRY_ID:
        if allow:
            reg.set_prices({k: v for k, v in entry.attributes.items() if k != "setting"})
        else:
            reg.prices = {}
    elif setting == WORKER_SETTING and entry.entry_id == worker_entry_id(subject):
        if allow:
            reg.set_worker(
                subject,
                coefficient=entry.attributes.get("coefficient", "1000"),
                payout_address=entry.attributes.get("payout_address", ""),
            )
        else:
            reg.remove_worker(subject)
    elif setting == BANNED_ADDRESS_SETTING and entry.entry_id == banned_address_entry_id(subject):
        _ = reg.ban_address(subject) if allow else reg.unban_address(subject)
    else:
        raise RegistryError(f"unknown policy setting {setting!r} in {entry.entry_id!r}")


class RegistryState:
    """The registry as the topic says it is: latest entry per id, folded into a `Registry`."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.versions: dict[str, int] = {}  # entry id -> registry version its entry carried
        self.version = 0
        self.registry = Registry()

    def update(self, key: str | None, value: Any) -> bool:
        """Take one record (a RegistryEntry model, or None for a tombstone); True if it changed
        the state. A malformed entry raises RegistryError and changes nothing."""
        if key is None:
            return False
        if value is None:
            self.versions.pop(key, None)
            if self.entries.pop(key, None) is None:
                return False
        else:
            entry = Entry(
                value.entry_id,
                str(value.kind),
                value.subject,
                value.allowed,
                dict(value.attributes),
            )
            if entry.allowed:
                apply_entry(Registry(), entry)  # validate before it can change the state
            self.entries[key] = entry
            self.versions[key] = int(value.version)
            self.version = max(self.version, int(value.version))
        self._rebuild()
        return True

    def gpu_required_since(self, model: str) -> int | None:
        """The registry version of the entry that requires a GPU for `model`, if one does."""
        eid = gpu_cc_entry_id(model)
        entry = self.entries.get(eid)
        if entry is None or not entry.allowed or model not in self.registry.gpu_cc_models:
            return None
        return self.versions.get(eid, 0)

    def _rebuild(self) -> None:
        # Rebuilt from the entries rather than patched, so the order in which two entries about
        # the same subject arrived cannot leave stale state behind.
        reg = Registry()
        for entry in self.entries.values():
            try:
                apply_entry(reg, entry)
            except RegistryError:
                continue
        self.registry = reg


async def read_registry(bootstrap: str, *, prefix: str | None = None) -> RegistryState:
    """The registry's current state, read from the topic's beginning to its end."""
    state = RegistryState()

    def take(key: str | None, value: Any) -> None:
        # A bad entry changes nothing; the service logs it when it follows the topic.
        with contextlib.suppress(RegistryError):
            state.update(key, value)

    async with CompactedMirror(bootstrap, REGISTRY_TOPIC, prefix=prefix) as mirror:
        await mirror.catch_up(take)
    return state


async def publish_registry(
    bootstrap: str,
    change: Callable[[Registry], object],
    *,
    prefix: str | None = None,
    updated_by: str | None = None,
) -> tuple[RegistryState, list[Entry]]:
    """Read the registry, apply `change` to a copy, publish the difference; (state, entries)."""
    state = await read_registry(bootstrap, prefix=prefix)
    new = Registry.from_dict(state.registry.to_dict())
    change(new)
    entries = diff(state.registry, new)
    who = updated_by or f"operator:{getpass.getuser()}"
    async with BusProducer(bootstrap, client_id="cocoon-registry", prefix=prefix) as producer:
        for entry in entries:
            state.version += 1
            record = models.RegistryEntry(
                entry_id=entry.entry_id,
                kind=entry.kind,
                subject=entry.subject,
                allowed=entry.allowed,
                attributes=entry.attributes,
                version=state.version,
                updated_by=who,
                updated_at=datetime.now(UTC),
            )
            await producer.send(REGISTRY_TOPIC, record)
            state.update(entry.entry_id, record)
    return state, entries
