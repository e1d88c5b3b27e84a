"""API keys: `sk-cocoon-<key id>-<secret>`, mapped to billing accounts; only hashes are kept.

The key id (public, 12 hex characters) finds the record without hashing every stored key; the
SHA-256 of the whole key is then compared in constant time, so neither a lookup miss nor a
partial match tells an attacker anything through timing. The plaintext exists only in the
return value of `create`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path

PREFIX = "sk-cocoon-"
_KEY_RE = re.compile(r"^sk-cocoon-([0-9a-f]{12})-([A-Za-z0-9_-]{43})$")
# Billing account ids: letters, digits, "_", "." and "-" (no ":"), as billing checks them.
_DELEGATED_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
# Compared against when the key id is unknown, so a miss costs the same as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"cocoon-no-such-key").hexdigest()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    account_id: str
    key_hash: str  # SHA-256 hex of the full key
    name: str = ""
    revoked: bool = False
    # A front end that serves many end users (the Telegram bot) may act for accounts under this
    # prefix (`tg-` -> `tg-<user id>`), named per request in the X-Cocoon-Account header.
    delegate_prefix: str = ""

    def acting_for(self, account_id: str) -> KeyRecord | None:
        """This key acting for `account_id`, or None when it may not."""
        prefix = self.delegate_prefix
        if not prefix or not _DELEGATED_RE.fullmatch(account_id):
            return None
        if not account_id.startswith(prefix) or account_id == prefix:
            return None
        return replace(self, account_id=account_id)


class KeyStore:
    """In-memory key records, optionally persisted as JSON (hashes only)."""

    def __init__(self, records: list[KeyRecord] | None = None) -> None:
        self._by_id: dict[str, KeyRecord] = {r.key_id: r for r in records or []}

    def create(self, account_id: str, name: str = "", *, delegate_prefix: str = "") -> str:
        """Make a key for `account_id` and return its plaintext; it is not stored anywhere."""
        while True:
            key_id = secrets.token_hex(6)
            if key_id not in self._by_id:
                break
        key = f"{PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        self._by_id[key_id] = KeyRecord(
            key_id, account_id, hash_key(key), name, delegate_prefix=delegate_prefix
        )
        return key

    def authenticate(self, key: str) -> KeyRecord | None:
        """The record of a valid, unrevoked key, else None."""
        match = _KEY_RE.match(key)
        record = self._by_id.get(match.group(1)) if match else None
        expected = record.key_hash if record is not None else _DUMMY_HASH
        ok = hmac.compare_digest(hash_key(key), expected)
        if not ok or record is None or record.revoked:
            return None
        return record

    def revoke(self, key_id: str) -> None:
        record = self._by_id[key_id]
        self._by_id[key_id] = KeyRecord(**{**asdict(record), "revoked": True})

    def records(self) -> list[KeyRecord]:
        return sorted(self._by_id.values(), key=lambda r: r.key_id)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps([asdict(r) for r in self.records()], indent=2))
        tmp.replace(path)  # atomic: a crash never leaves a half-written store

    @classmethod
    def load(cls, path: Path) -> KeyStore:
        if not path.exists():
            return cls()
        return cls([KeyRecord(**item) for item in json.loads(path.read_text())])
