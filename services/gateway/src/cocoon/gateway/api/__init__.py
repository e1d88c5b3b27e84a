"""The gateway's OpenAI-compatible HTTP surface, independent of the bus."""

from cocoon.gateway.api.app import create_app
from cocoon.gateway.api.backend import (
    ChatChunk,
    Embeddings,
    InferenceBackend,
    InferenceRequest,
    ModelInfo,
    ToolCallDelta,
    Usage,
)
from cocoon.gateway.api.errors import (
    ApiError,
    AuthenticationFailed,
    EndpointNotServed,
    InsufficientFunds,
    InvalidRequest,
    NoWorkerAvailable,
    RateLimited,
    UnknownModel,
    UpstreamTimeout,
    WorkerLost,
)
from cocoon.gateway.api.keys import KeyRecord, KeyStore
from cocoon.gateway.api.settings import ApiSettings

__all__ = [
    "ApiError",
    "ApiSettings",
    "AuthenticationFailed",
    "ChatChunk",
    "Embeddings",
    "EndpointNotServed",
    "InferenceBackend",
    "InferenceRequest",
    "InsufficientFunds",
    "InvalidRequest",
    "KeyRecord",
    "KeyStore",
    "ModelInfo",
    "NoWorkerAvailable",
    "RateLimited",
    "ToolCallDelta",
    "UnknownModel",
    "UpstreamTimeout",
    "Usage",
    "WorkerLost",
    "create_app",
]
