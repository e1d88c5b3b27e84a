"""The client's trust configuration: the registry key and the roots, nothing else.

    {"format": "cocoon.client.config/1",
     "registry_public_key": "<64 hex>",            the key that signs registry entries
     "trusted_roots": ["intel"] | [..., {"name", "pem", "development": true}],
     "gateway": "http://127.0.0.1:8080",           optional: the gateway this file is for
     "max_evidence_age_seconds": 86400}            optional

Where it is found, first match wins: an explicit path; `COCOON_CLIENT_CONFIG`; the file for this
gateway, `<config dir>/gateways/<host>_<port>.json` (what `cocoon up` writes for its own
gateway, so a development root never applies to another gateway); `<config dir>/client.json`.
The config dir is `COCOON_CONFIG_DIR`, else `~/.config/cocoon`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cocoon.client.errors import ConfigError
from cocoon.client.roots import INTEL_ROOT, TrustRoot

CONFIG_FORMAT = "cocoon.client.config/1"
DEFAULT_MAX_EVIDENCE_AGE = 86_400


@dataclass(frozen=True)
class ClientConfig:
    registry_public_key: bytes
    roots: tuple[TrustRoot, ...] = (INTEL_ROOT,)
    gateway: str | None = None
    max_evidence_age_seconds: int = DEFAULT_MAX_EVIDENCE_AGE
    source: str = ""  # where it was read from, for messages

    @property
    def development_roots(self) -> list[TrustRoot]:
        return [r for r in self.roots if r.development]

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "") -> ClientConfig:
        if not isinstance(doc, dict) or doc.get("format") != CONFIG_FORMAT:
            raise ConfigError(f"{source or 'config'}: format must be {CONFIG_FORMAT!r}")
        unknown = set(doc) - {
            "format",
            "registry_public_key",
            "trusted_roots",
            "gateway",
            "max_evidence_age_seconds",
        }
        if unknown:
            raise ConfigError(f"{source}: unknown keys {sorted(unknown)}")
        try:
            key = bytes.fromhex(doc["registry_public_key"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{source}: registry_public_key must be 64 hex digits") from None
        if len(key) != 32:
            raise ConfigError(f"{source}: registry_public_key must be 64 hex digits")
        roots = []
        for item in doc.get("trusted_roots", ["intel"]):
            if item == "intel":
                roots.append(INTEL_ROOT)
            elif isinstance(item, dict) and isinstance(item.get("pem"), str):
                roots.append(
                    TrustRoot.from_pem(
                        str(item.get("name", "unnamed")),
                        item["pem"].encode(),
                        development=bool(item.get("development", False)),
                    )
                )
            else:
                raise ConfigError(f"{source}: a trusted root is 'intel' or {{name, pem}}")
        if not roots:
            raise ConfigError(f"{source}: no trusted roots")
        age = doc.get("max_evidence_age_seconds", DEFAULT_MAX_EVIDENCE_AGE)
        if not isinstance(age, int) or age <= 0:
            raise ConfigError(f"{source}: max_evidence_age_seconds must be a positive integer")
        return cls(key, tuple(roots), doc.get("gateway"), age, source)

    def to_dict(self) -> dict[str, Any]:
        roots: list[Any] = []
        for root in self.roots:
            if root == INTEL_ROOT:
                roots.append("intel")
            else:
                pem = x509.load_der_x509_certificate(root.der).public_bytes(Encoding.PEM)
                roots.append(
                    {"name": root.name, "pem": pem.decode(), "development": root.development}
                )
        doc: dict[str, Any] = {
            "format": CONFIG_FORMAT,
            "registry_public_key": self.registry_public_key.hex(),
            "trusted_roots": roots,
            "max_evidence_age_seconds": self.max_evidence_age_seconds,
        }
        if self.gateway:
            doc["gateway"] = self.gateway
        return doc


def config_dir() -> Path:
    override = os.environ.get("COCOON_CONFIG_DIR")
    return Path(override) if override else Path.home() / ".config" / "cocoon"


def gateway_config_path(gateway: str) -> Path:
    """The per-gateway file: `<config dir>/gateways/<host>_<port>.json`."""
    parts = urlsplit(gateway)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    slug = re.sub(r"[^A-Za-z0-9.-]", "_", f"{parts.hostname or 'localhost'}_{port}")
    return config_dir() / "gateways" / f"{slug}.json"


def write_config(path: Path, config: ClientConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    tmp.replace(path)


def load_config(path: str | Path | None = None, *, gateway: str | None = None) -> ClientConfig:
    candidates: list[Path] = []
    if path is not None:
        candidates = [Path(path)]
    elif os.environ.get("COCOON_CLIENT_CONFIG"):
        candidates = [Path(os.environ["COCOON_CLIENT_CONFIG"])]
    else:
        if gateway:
            candidates.append(gateway_config_path(gateway))
        candidates.append(config_dir() / "client.json")
    for candidate in candidates:
        if candidate.exists():
            try:
                doc = json.loads(candidate.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read {candidate}: {exc}") from None
            config = ClientConfig.from_dict(doc, str(candidate))
            if config.gateway and gateway and _origin(config.gateway) != _origin(gateway):
                raise ConfigError(f"{candidate} is for gateway {config.gateway}, not {gateway}")
            return config
    raise ConfigError(
        "no client configuration: pin the registry key in "
        + " or ".join(str(c) for c in candidates)
        + " (`cocoon up` writes one for its own gateway)"
    )


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return (
        parts.scheme,
        parts.hostname or "",
        parts.port or (443 if parts.scheme == "https" else 80),
    )
