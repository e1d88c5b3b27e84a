"""The network registry as the client sees it: entries signed by the pinned registry key.

The gateway serves the latest entry per id (`GET /v1/cocoon/registry`); each one is checked
against the registry key from the client's configuration, and only entries that verify count.
An entry whose signature fails is remembered by id, so a refusal can say that the thing a
worker relies on is vouched for only by a forged entry. Entry format and signed bytes:
docs/sealed-requests.md ("The registry").
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

from cocoon.client.canonical import verify_signed
from cocoon.client.errors import WireError

ENTRY_DOMAIN = "cocoon/registry-entry/v1"
SIGNED_FIELDS = (
    "entry_id",
    "kind",
    "subject",
    "allowed",
    "attributes",
    "version",
    "updated_by",
    "updated_at",
)
GPU_CC_SETTING = "require_gpu_cc"


def entry_payload(entry: dict[str, Any]) -> dict[str, Any]:
    """The signed part of an entry, typed as the signature covers it."""
    try:
        payload = {name: entry[name] for name in SIGNED_FIELDS}
    except KeyError as exc:
        raise WireError(f"registry entry lacks {exc.args[0]!r}") from None
    attributes = payload["attributes"]
    if not isinstance(attributes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise WireError("registry entry attributes must map strings to strings")
    for name in ("version", "updated_at"):
        if not isinstance(payload[name], int) or isinstance(payload[name], bool):
            raise WireError(f"registry entry {name} must be an integer")
    if not isinstance(payload["allowed"], bool):
        raise WireError("registry entry allowed must be a boolean")
    return payload


def measurement_id(mrtd: bytes, rtmrs: tuple[bytes, ...]) -> str:
    return hashlib.sha256(mrtd + b"".join(rtmrs)).hexdigest()


@dataclass
class RegistryView:
    """What the verified entries allow (the same folding as the attestation service's)."""

    version: int = 0
    images: set[str] = field(default_factory=set)
    revoked_images: dict[str, int] = field(default_factory=dict)  # hash -> registry version
    measurement_sets: set[str] = field(default_factory=set)  # measurement ids
    models: set[str] = field(default_factory=set)
    tcb_statuses: set[str] = field(default_factory=lambda: {"UpToDate"})
    advisories: set[str] = field(default_factory=set)
    gpu_cc_models: set[str] = field(default_factory=set)
    forged: dict[str, str] = field(default_factory=dict)  # entry id -> why it was refused
    digest: str = ""  # over the verified entries: a change invalidates cached verdicts

    @classmethod
    def from_entries(cls, entries: list[dict[str, Any]], registry_key: bytes) -> RegistryView:
        view = cls()
        latest: dict[str, tuple[dict[str, Any], bytes]] = {}
        for raw in entries:
            entry_id = raw.get("entry_id") if isinstance(raw, dict) else None
            if not isinstance(entry_id, str):
                continue
            try:
                payload = entry_payload(raw)
                signature = base64.b64decode(raw.get("signature") or "", validate=True)
            except (WireError, ValueError) as exc:
                view.forged[entry_id] = f"malformed: {exc}"
                continue
            if not verify_signed(registry_key, ENTRY_DOMAIN, payload, signature):
                view.forged[entry_id] = "signature does not verify with the pinned registry key"
                continue
            held = latest.get(entry_id)
            if held is None or held[0]["version"] < payload["version"]:
                latest[entry_id] = (payload, signature)
        digest = hashlib.sha256()
        for entry_id in sorted(latest):
            payload, signature = latest[entry_id]
            digest.update(signature)
            view._apply(payload)
        view.digest = digest.hexdigest()
        return view

    def _apply(self, e: dict[str, Any]) -> None:
        self.version = max(self.version, e["version"])
        kind, subject, allowed, attrs = e["kind"], e["subject"], e["allowed"], e["attributes"]
        if kind == "IMAGE":
            if allowed:
                self.images.add(subject.lower())
            else:
                self.images.discard(subject.lower())
                self.revoked_images[subject.lower()] = e["version"]
        elif kind == "MEASUREMENTS":
            try:
                mid = measurement_id(
                    bytes.fromhex(attrs["mrtd"]),
                    tuple(bytes.fromhex(attrs[f"rtmr{i}"]) for i in range(4)),
                )
            except (KeyError, ValueError):
                return
            _toggle(self.measurement_sets, mid, allowed)
        elif kind == "MODEL":
            _toggle(self.models, subject, allowed)
        elif kind == "TCB_STATUS":
            _toggle(self.tcb_statuses, subject, allowed)
        elif kind == "ADVISORY":
            _toggle(self.advisories, subject, allowed)
        elif kind == "POLICY" and attrs.get("setting") == GPU_CC_SETTING:
            _toggle(self.gpu_cc_models, subject, allowed)


def _toggle(items: set[str], item: str, allowed: bool) -> None:
    if allowed:
        items.add(item)
    else:
        items.discard(item)
