"""What the gateway serves to clients that verify workers themselves, as a PCCS serves
collateral: the evidence behind each worker's TRUSTED verdict, the DCAP collateral it was
verified against, and the signed registry. None of it needs trusting the gateway: quotes and
collateral chain to Intel, registry entries carry the registry key's signature."""

from __future__ import annotations

import base64
import json
from typing import Any

from cocoon.core.bus.broadcast import BroadcastRecord
from cocoon.core.codec.timestamps import epoch_millis
from cocoon.core.contracts import Topic
from cocoon.gateway.models import NetworkPrices

ATTESTED_TOPIC = Topic.ATTESTATION_ATTESTED
COLLATERAL_TOPIC = Topic.ATTESTATION_COLLATERAL
REGISTRY_TOPIC = Topic.ATTESTATION_REGISTRY
TOPICS = (ATTESTED_TOPIC, COLLATERAL_TOPIC, REGISTRY_TOPIC)


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(bytes(value)).decode()


class AttestedState:
    """The latest record per key of the three compacted topics, in the JSON the client reads."""

    def __init__(self) -> None:
        self.evidence: dict[str, dict[str, Any]] = {}  # worker id -> evidence
        self.collateral: dict[str, dict[str, Any]] = {}  # fmspc -> collateral document
        self.registry: dict[str, dict[str, Any]] = {}  # entry id -> entry

    def prices(self) -> NetworkPrices | None:
        """The registry's price list, for `/v1/models` (None until the registry has one)."""
        return NetworkPrices.from_registry(self.registry)

    def on_record(self, record: BroadcastRecord) -> None:
        key, value = record.key, record.value
        if key is None:
            return
        tables: dict[str, dict[str, dict[str, Any]]] = {
            ATTESTED_TOPIC: self.evidence,
            COLLATERAL_TOPIC: self.collateral,
            REGISTRY_TOPIC: self.registry,
        }
        table = tables[record.topic]
        if value is None:
            table.pop(key, None)
            return
        try:
            if record.topic == ATTESTED_TOPIC:
                table[key] = {
                    "claims": _b64(value["claims"]),
                    "tdx_quote": _b64(value["tdx_quote"]),
                    "gpu_evidence": _b64(value.get("gpu_evidence")),
                    "collected_at": epoch_millis(value["collected_at"]),
                }
            elif record.topic == COLLATERAL_TOPIC:
                table[key] = json.loads(value["collateral_json"])
            else:
                table[key] = {
                    "entry_id": value["entry_id"],
                    "kind": str(value["kind"]),
                    "subject": value["subject"],
                    "allowed": value["allowed"],
                    "attributes": dict(value["attributes"]),
                    "version": int(value["version"]),
                    "updated_by": value["updated_by"],
                    "updated_at": epoch_millis(value["updated_at"]),
                    "signature": _b64(value.get("signature")),
                }
        except (KeyError, TypeError, ValueError):
            table.pop(key, None)  # nothing served beats something malformed
