"""`cocoon run gateway`: the OpenAI-compatible HTTP API in front of the Kafka pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import uvicorn
from pydantic import Field

from cocoon.core.bus import BusProducer
from cocoon.core.bus.broadcast import BroadcastReader
from cocoon.core.contracts import Topic
from cocoon.core.paths import cache_dir
from cocoon.core.runtime import Service, ServiceSettings
from cocoon.core.verdicts import load_pinned_key
from cocoon.gateway.admission import AdmissionGrants
from cocoon.gateway.api.app import create_app
from cocoon.gateway.api.auth import Authenticator
from cocoon.gateway.api.keys import KeyStore
from cocoon.gateway.api.ratelimit import RateLimiter
from cocoon.gateway.api.settings import ApiSettings
from cocoon.gateway.attested import TOPICS as ATTESTED_TOPICS
from cocoon.gateway.attested import AttestedState
from cocoon.gateway.grpc_api.server import InferenceService, inference_server
from cocoon.gateway.pipeline import REPLY_TOPICS
from cocoon.gateway.relay import ClientSurface, RelayBackend
from cocoon.gateway.statement import LedgerStatements
from cocoon.gateway.trust import verdict_checker
from cocoon.gateway.workers import WorkerDirectory

log = logging.getLogger(__name__)


def _default_gateway_id() -> str:
    return f"gw-{socket.gethostname()}-{os.getpid()}"


class Settings(ServiceSettings):
    gateway_id: str = Field(default_factory=_default_gateway_id)
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    # The gRPC inference API (grpc_api/inference.proto) on this port; None: not served.
    inference_grpc_port: int | None = Field(None, ge=0, le=65535)
    keys_file: Path = Field(default_factory=lambda: cache_dir() / "gateway" / "api-keys.json")
    attestation_public_key: str = Field(
        "", description="hex Ed25519 key of the attestation service; verdicts must verify with it"
    )
    attestation_public_key_file: Path | None = None
    # The registry key, only to tell clients which key signs the registry it serves (a client
    # compares it with the key it pinned and never trusts it: docs/sealed-requests.md).
    registry_public_key: str = Field("", description="hex Ed25519 key that signs the registry")
    registry_public_key_file: Path | None = None
    heartbeat_stale_seconds: float = Field(10.0, gt=0)
    # Admission grants: admit an account's requests against funds billing holds for this
    # gateway ahead of time, asking for holds worth this many requests at once (0: off, every
    # request waits for billing's decision).
    grant_ask_requests: int = Field(32, ge=0, le=1000)
    api: ApiSettings = Field(default_factory=ApiSettings)


def _registry_key_hex(settings: Settings) -> str | None:
    value = settings.registry_public_key or settings.registry_public_key_file
    return load_pinned_key(value).hex() if value else None


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside the service runtime, which owns SIGTERM/SIGINT.

    uvicorn's own handlers would swallow the signal and re-raise it on exit, which the runtime
    takes as a second signal and abandons in-flight streams.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway(Service):
    name = "gateway"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = BusProducer(settings.kafka_bootstrap, client_id=settings.gateway_id)
        self.directory = WorkerDirectory(
            verdict_checker(settings.attestation_public_key, settings.attestation_public_key_file),
            heartbeat_stale_s=settings.heartbeat_stale_seconds,
        )
        grants = (
            AdmissionGrants(settings.gateway_id, ask_requests=settings.grant_ask_requests)
            if settings.grant_ask_requests
            else None
        )
        # Evidence, collateral and the signed registry, served to clients that verify workers.
        self.attested = AttestedState()
        self.backend = RelayBackend(
            self.producer,
            self.directory,
            gateway_id=settings.gateway_id,
            grants=grants,
            prices=self.attested.prices,
        )
        bootstrap = settings.kafka_bootstrap
        self.verdicts = BroadcastReader(
            bootstrap, [Topic.ATTESTATION_VERDICTS], self.directory.on_record, from_beginning=True
        )
        self.heartbeats = BroadcastReader(
            bootstrap, [Topic.WORKER_HEARTBEATS], self.directory.on_record, from_beginning=False
        )
        self.replies = BroadcastReader(
            bootstrap, list(REPLY_TOPICS), self.backend.on_reply, from_beginning=False
        )
        self.attested_reader = BroadcastReader(
            bootstrap, list(ATTESTED_TOPICS), self.attested.on_record, from_beginning=True
        )
        keys = KeyStore.load(settings.keys_file) if settings.keys_file.exists() else KeyStore()
        api = settings.api
        # One rate-limit budget per key, whichever surface spends it.
        authenticator = Authenticator(
            keys, RateLimiter(api.rate_limit_per_second, api.rate_limit_burst)
        )
        self.grpc: grpc.aio.Server | None = None
        if settings.inference_grpc_port is not None:
            self.grpc, self.grpc_port = inference_server(
                InferenceService(self.backend, authenticator, api),
                settings.http_host,
                settings.inference_grpc_port,
            )
        self.app = create_app(
            self.backend,
            keys,
            settings.api,
            authenticator=authenticator,
            sealed=ClientSurface(
                self.backend,
                self.attested,
                LedgerStatements(bootstrap),
                registry_public_key=_registry_key_hex(settings),
            ),
        )
        config = uvicorn.Config(
            self.app,
            host=settings.http_host,
            port=settings.http_port,
            log_level="warning",
            lifespan="off",
        )
        self.server = _EmbeddedServer(config)

    @property
    def _readers(self) -> tuple[BroadcastReader, ...]:
        return (self.verdicts, self.heartbeats, self.replies, self.attested_reader)

    async def start(self) -> None:
        await self.producer.start()
        for reader in self._readers:
            await reader.start()
        self._tasks = [
            asyncio.create_task(reader.run(), name=f"gateway-{index}")
            for index, reader in enumerate(self._readers)
        ]
        await self.verdicts.wait_caught_up(timeout_s=30)
        self._server_task = asyncio.create_task(self.server.serve(), name="gateway-http")
        while not self.server.started:
            if self._server_task.done():
                self._server_task.result()  # raises the bind error
            await asyncio.sleep(0.05)
        log.info(
            "gateway %s listening on http://%s:%d",
            self.settings.gateway_id,
            self.settings.http_host,
            self.settings.http_port,
        )
        if self.grpc is not None:
            await self.grpc.start()
            log.info("gRPC inference API on %s:%d", self.settings.http_host, self.grpc_port)

    async def run(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        # Stop accepting connections; uvicorn lets in-flight streams finish.
        self.server.should_exit = True
        if self.grpc is not None:
            await self.grpc.stop(grace=self.settings.api.default_timeout)
        with contextlib.suppress(Exception):
            await self._server_task

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for reader in self._readers:
            with contextlib.suppress(Exception):
                await reader.stop()
        await self.producer.stop()


def build(settings: Settings) -> Gateway:
    return Gateway(settings)
