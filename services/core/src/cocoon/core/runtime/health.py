"""`grpc.health.v1` over an asyncio gRPC server: NOT_SERVING until ready, and again on shutdown.

Status is published both for the overall server ("") and for the service's own name, which
is what Kubernetes gRPC probes and `grpc_health_probe -service=<name>` ask for.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

# The stubs give the status values as constants of the response class, not of its enum.
Status = health_pb2.HealthCheckResponse


class HealthServer:
    def __init__(self, service_name: str, host: str, port: int) -> None:
        self.service_name = service_name
        self._address = f"{host}:{port}"
        self._servicer = health_aio.HealthServicer()
        self._server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, self._server)
        self.port = 0

    async def start(self) -> int:
        """Listen (NOT_SERVING for now); return the bound port (useful when asked for 0)."""
        self.port = self._server.add_insecure_port(self._address)
        if self.port == 0:
            raise OSError(f"gRPC health: cannot listen on {self._address}")
        await self._set(Status.NOT_SERVING)
        await self._server.start()
        return self.port

    async def serving(self) -> None:
        await self._set(Status.SERVING)

    async def not_serving(self) -> None:
        await self._set(Status.NOT_SERVING)

    async def stop(self, grace: float = 1.0) -> None:
        # Watchers get NOT_SERVING before the server goes away.
        await self._servicer.enter_graceful_shutdown()
        await self._server.stop(grace)

    async def _set(self, status: int) -> None:
        for name in ("", self.service_name):
            await self._servicer.set(name, status)


async def check_health(address: str, service: str = "", deadline_s: float = 2.0) -> str:
    """The status name ("SERVING", "NOT_SERVING", ...) reported at `address` (host:port)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        # The stub package declares HealthStub without its generated methods.
        reply = await stub.Check(request, timeout=deadline_s)  # type: ignore[attr-defined]
    return Status.ServingStatus.Name(reply.status)
