"""What a worker's model serves (Heartbeat.capabilities) and what each endpoint needs.

The worker-proxy announces its capabilities in every (signed) heartbeat and refuses requests
for an endpoint its model does not serve; the gateway routes and lists models by the same
announcement. Both read the rules here so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Iterable

from cocoon.core.codec import models

CHAT: models.CapabilitySymbol = "CHAT"
TOOLS: models.CapabilitySymbol = "TOOLS"
EMBEDDINGS: models.CapabilitySymbol = "EMBEDDINGS"

# The OpenAI endpoint -> the capability a model needs to serve it.
ENDPOINT_CAPABILITY: dict[str, models.CapabilitySymbol] = {
    "chat.completions": CHAT,
    "completions": CHAT,
    "embeddings": EMBEDDINGS,
}


def announced(capabilities: Iterable[str] | None) -> frozenset[str]:
    """A heartbeat's capabilities as a set. None listed (a worker before Heartbeat v4) reads as
    CHAT, all such a worker served; UNKNOWN (a symbol newer than this reader) grants nothing."""
    listed = frozenset(capabilities or ())
    return (listed or frozenset({CHAT})) - {"UNKNOWN"}


def serves(capabilities: frozenset[str], endpoint: str) -> bool:
    return ENDPOINT_CAPABILITY[endpoint] in capabilities
