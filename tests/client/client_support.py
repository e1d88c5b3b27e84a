"""A simulated TDX worker, a registry key and a client configuration for the client's tests.

The attestation package plays the operator's side (simulated quotes and collateral, signed
registry entries); the client verifies with its own code only.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cocoon.attestation.registry_signing import sign_entry
from cocoon.attestation.simtdx import DEFAULT_MEASUREMENTS, SimTdx
from cocoon.attestation.verdicts import ServiceKey
from cocoon.client.config import ClientConfig
from cocoon.client.roots import INTEL_ROOT, TrustRoot
from cocoon.client.verify import Evidence
from cocoon.core import tee
from cocoon.core.crypto import WorkerKeys

MODEL = "smollm2-135m"
IMAGE = DEFAULT_MEASUREMENTS.image_hash().hex()


def registry_entry(
    key: ServiceKey,
    kind: str,
    subject: str,
    *,
    allowed: bool = True,
    version: int = 1,
    attributes: dict[str, str] | None = None,
    entry_id: str | None = None,
) -> dict[str, Any]:
    """A signed entry in the JSON form the gateway serves."""
    prefix = {"IMAGE": "image", "MODEL": "model", "TCB_STATUS": "tcb"}[kind]
    fields = {
        "entry_id": entry_id or f"{prefix}:{subject}",
        "kind": kind,
        "subject": subject,
        "allowed": allowed,
        "attributes": attributes or {},
        "version": version,
        "updated_by": "test",
        "updated_at": int(time.time() * 1000),
    }
    signature = sign_entry(
        key, {**fields, "updated_at": datetime.fromtimestamp(fields["updated_at"] / 1000, UTC)}
    )
    return {**fields, "signature": base64.b64encode(signature).decode()}


def allow_all(key: ServiceKey) -> list[dict[str, Any]]:
    return [
        registry_entry(key, "IMAGE", IMAGE, version=1),
        registry_entry(key, "MODEL", MODEL, version=2, attributes={"sha256": "ab" * 32}),
    ]


@dataclass
class SimWorker:
    worker_id: str
    keys: WorkerKeys
    claims: bytes
    sim: SimTdx

    @classmethod
    def make(cls, sim: SimTdx, worker_id: str = "w-sim-1", model: str = MODEL) -> SimWorker:
        keys = WorkerKeys.generate()
        claims = tee.encode_claims(keys.public, model, timestamp=int(time.time()))
        return cls(worker_id, keys, claims, sim)

    def evidence(self, **quote_knobs: Any) -> Evidence:
        report_data = hashlib.sha512(self.claims).digest()
        return Evidence(self.worker_id, self.claims, self.sim.quote(report_data, **quote_knobs))


def sgx_quote(pck_chain_pem: bytes) -> bytes:
    """An SGX quote (v3, TEE type 0, ECDSA-P256) in the real layout, signatures zeroed: the
    client must refuse it as non-TDX evidence before any signature is looked at."""
    header = struct.pack("<HHIHH", 3, 2, 0, 0, 0) + bytes(16) + bytes(20)
    qe_auth = struct.pack("<H", 32) + bytes(32)
    cert = struct.pack("<HI", 5, len(pck_chain_pem)) + pck_chain_pem
    signature_data = bytes(64 + 64 + 384 + 64) + qe_auth + cert
    return header + bytes(384) + struct.pack("<I", len(signature_data)) + signature_data


def dev_config(sim: SimTdx, registry_key: ServiceKey, *, dev_root: bool = True) -> ClientConfig:
    roots = [INTEL_ROOT]
    if dev_root:
        anchor = sim.trust_anchor
        roots.append(TrustRoot(anchor.name, anchor.der, development=True))
    return ClientConfig(registry_key.public, tuple(roots))
