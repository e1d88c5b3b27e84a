"""Registry entries are signed by the registry key; readers refuse any other entry.

The registry key is an Ed25519 key held by whoever may change the network's policy (COCOON's
root contract owner); `cocoon registry` signs every entry it publishes with it, the attestation
service pins its public half and ignores unsigned or wrongly signed entries, and clients pin it
too (`cocoon.client.registry` verifies the same bytes). Signed message:

    canonical_bytes({"domain": "cocoon/registry-entry/v1",
                     "payload": {entry_id, kind, subject, allowed, attributes, version,
                                 updated_by, updated_at (unix ms)}})

The key file is `COCOON_REGISTRY_KEY_FILE`, else `cache_dir()/attestation/registry-key.pem`
(development creates it on first use; its public key is written beside it as `.pub`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cocoon.attestation.verdicts import ServiceKey
from cocoon.core.codec.timestamps import epoch_millis
from cocoon.core.crypto import SignatureError, sign_canonical, verify_canonical
from cocoon.core.paths import cache_dir

REGISTRY_ENTRY_DOMAIN = "cocoon/registry-entry/v1"
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


class UnsignedEntry(ValueError):
    """An entry without a signature, or one the pinned registry key did not make."""


def default_registry_key_path() -> Path:
    override = os.environ.get("COCOON_REGISTRY_KEY_FILE")
    return Path(override) if override else cache_dir() / "attestation" / "registry-key.pem"


def load_registry_key(path: Path | None = None, *, create: bool = True) -> ServiceKey:
    """The registry signing key (an Ed25519 PEM like the service key; `.pub` beside it)."""
    return ServiceKey.load(path or default_registry_key_path(), create=create)


def entry_payload(value: Any) -> dict[str, Any]:
    """The signed fields of a RegistryEntry (a model or a dict), as they are signed."""

    def get(name: str) -> Any:
        return value[name] if isinstance(value, dict) else getattr(value, name)

    return {
        "entry_id": str(get("entry_id")),
        "kind": str(get("kind")),
        "subject": str(get("subject")),
        "allowed": bool(get("allowed")),
        "attributes": {str(k): str(v) for k, v in dict(get("attributes")).items()},
        "version": int(get("version")),
        "updated_by": str(get("updated_by")),
        "updated_at": epoch_millis(get("updated_at")),
    }


def sign_entry(key: ServiceKey, value: Any) -> bytes:
    return sign_canonical(key.private, REGISTRY_ENTRY_DOMAIN, entry_payload(value))


def check_entry(value: Any, registry_public_key: bytes) -> None:
    """Raise UnsignedEntry unless `value` carries the registry key's signature over its fields."""
    signature = value.get("signature") if isinstance(value, dict) else value.signature
    if not signature:
        raise UnsignedEntry("the entry is not signed")
    try:
        verify_canonical(
            registry_public_key, REGISTRY_ENTRY_DOMAIN, entry_payload(value), bytes(signature)
        )
    except SignatureError:
        raise UnsignedEntry("the entry's signature does not verify with the registry key") from None
