"""The `Service` contract and `run_service`, which gives a service its process.

Lifecycle driven by `serve`:

1. health (NOT_SERVING) and /metrics listen; SIGTERM/SIGINT handlers are installed;
2. `await service.start()`: connect clients, join groups; then health says SERVING;
3. `await service.run(stopping)`: do work until `stopping` is set;
4. on the first signal: health NOT_SERVING, `stopping` is set, and `run` has
   `shutdown_grace_seconds` to stop taking new work, finish what is in flight and commit;
   past the grace period (or on a second signal) `run` is cancelled and uncommitted work is
   handed back to Kafka (it will be redelivered);
5. `await service.close()` always runs: close clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable

from cocoon.core.runtime.health import HealthServer
from cocoon.core.runtime.logs import configure_logging
from cocoon.core.runtime.metrics import SERVICE_INFO, SERVICE_READY, MetricsServer
from cocoon.core.runtime.settings import ServiceSettings
from cocoon.core.telemetry.tracing import setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1  # start, run or close raised
EXIT_CONFIG = 2  # settings or service resolution (the CLI)
EXIT_GRACE_EXCEEDED = 3  # in-flight work was cancelled and handed back

CLOSE_TIMEOUT_S = 10.0


class Service(ABC):
    """One Cocoon service process. `name` is its health-check service name and log label."""

    name: str

    @abstractmethod
    async def start(self) -> None:
        """Acquire clients and join consumer groups; return once ready to take work."""

    @abstractmethod
    async def run(self, stopping: asyncio.Event) -> None:
        """Take work until `stopping` is set, then take no more, finish (and commit) what is
        in flight, and return. Returning early means the service is done."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Close clients. Called once after `run` ends, fails or is cancelled."""


def _install_signals(stopping: asyncio.Event, force: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            log.warning("second %s: abandoning in-flight work", signal.Signals(signum).name)
            force.set()
        else:
            log.info("%s received: shutting down", signal.Signals(signum).name)
            stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


def _remove_signals() -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)


async def _first(*aws: asyncio.Future, within_s: float | None = None) -> set[asyncio.Future]:
    done, _ = await asyncio.wait(aws, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    return done


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _drive(service: Service, settings: ServiceSettings, health: HealthServer) -> int:
    """Steps 2-4 of the lifecycle; returns the exit code."""
    name = settings.service_name or service.name
    stopping, force = asyncio.Event(), asyncio.Event()
    _install_signals(stopping, force)
    stop_wait = asyncio.ensure_future(stopping.wait())
    force_wait = asyncio.ensure_future(force.wait())
    try:
        start = asyncio.ensure_future(service.start())
        if start not in await _first(start, stop_wait):
            log.info("stopped before the service was ready")
            await _cancel(start)
            return EXIT_OK
        start.result()
        await health.serving()
        SERVICE_READY.labels(name).set(1)
        log.info("service ready")

        work = asyncio.ensure_future(service.run(stopping))
        await _first(work, stop_wait)
        await health.not_serving()
        SERVICE_READY.labels(name).set(0)
        if not work.done():
            grace = settings.shutdown_grace_seconds
            log.info("draining in-flight work (grace %.1fs)", grace)
            if work not in await _first(work, force_wait, within_s=grace):
                log.warning("in-flight work not finished in time; handing it back to Kafka")
                await _cancel(work)
                return EXIT_GRACE_EXCEEDED
        work.result()
        log.info("service stopped")
        return EXIT_OK
    finally:
        for waiter in (stop_wait, force_wait):
            waiter.cancel()
        _remove_signals()


async def serve(service: Service, settings: ServiceSettings) -> int:
    """Run `service` with health and metrics until it ends or is signalled; the exit code."""
    name = settings.service_name or service.name
    SERVICE_INFO.info({"service": name, "instance": settings.instance_id})
    SERVICE_READY.labels(name).set(0)
    health = HealthServer(name, settings.listen_host, settings.grpc_health_port)
    metrics = MetricsServer(settings.listen_host, settings.metrics_port)
    code = EXIT_FAILED
    try:
        await health.start()
        metrics.start()
        log.info(
            "listening",
            extra={"grpc_health_port": health.port, "metrics_port": metrics.port},
        )
        code = await _drive(service, settings, health)
    except Exception:
        log.exception("service failed")
        code = EXIT_FAILED
    finally:
        try:
            await asyncio.wait_for(service.close(), CLOSE_TIMEOUT_S)
        except Exception:
            log.exception("closing the service failed")
            code = code or EXIT_FAILED
        await health.stop()
        metrics.stop()
    return code


def _configure(name: str, settings: ServiceSettings) -> None:
    configure_logging(name, settings.instance_id, level=settings.log_level, fmt=settings.log_format)
    setup_tracing(
        name,
        instance_id=settings.instance_id,
        otlp_endpoint=settings.otlp_endpoint,
        console=settings.traces_console,
    )


def run_service(service: Service | Callable[[], Service], settings: ServiceSettings) -> int:
    """Configure logging and tracing for this process, then `serve`; the exit code.

    `service` may be a factory: it is then called inside the event loop, so it can create
    asyncio clients (aiokafka refuses to be built outside a running loop).
    """

    async def main() -> int:
        built = service if isinstance(service, Service) else service()
        if not isinstance(built, Service):
            raise TypeError(f"the service factory returned {type(built).__name__}, not a Service")
        _configure(settings.service_name or built.name, settings)
        return await serve(built, settings)

    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
            return runner.run(main())
    finally:
        shutdown_tracing()


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None  # asyncio's default
