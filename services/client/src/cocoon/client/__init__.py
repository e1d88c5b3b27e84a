"""Cocoon's client: verifies workers itself and seals prompts end to end (docs/sealed-requests.md).

from cocoon.client import SealedSession, SealingTransport, SyncSealingTransport, load_config
"""

from cocoon.client.config import ClientConfig, load_config
from cocoon.client.errors import ClientError, GatewayError, NoTrustedWorker
from cocoon.client.session import SealedSession
from cocoon.client.sync import SyncSealingTransport
from cocoon.client.transport import SealingTransport
from cocoon.client.verify import WorkerCheck, WorkerVerifier

__all__ = [
    "ClientConfig",
    "ClientError",
    "GatewayError",
    "NoTrustedWorker",
    "SealedSession",
    "SealingTransport",
    "SyncSealingTransport",
    "WorkerCheck",
    "WorkerVerifier",
    "load_config",
]
