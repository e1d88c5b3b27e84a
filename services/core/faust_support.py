"""Faust apps with Cocoon's defaults, and running one inside an asyncio program.

Defaults chosen from experience with faust-streaming 0.15.3 against Kafka 4.x: no web server
(services expose gRPC health and /metrics through cocoon.core.runtime instead), an in-memory
table store unless asked otherwise, and OpenTelemetry tracing of every event and send.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from cocoon.core.runtime.service import Service
from cocoon.core.telemetry.faust_tracing import instrument_faust_app


def create_app(
    app_id: str,
    bootstrap: str,
    *,
    session_timeout: float = 30.0,
    heartbeat_interval: float = 3.0,
    store: str = "memory://",
    traced: bool = True,
    **settings: Any,
) -> faust.App:
    """A Faust app on `bootstrap` (host:port[,host:port]) with Cocoon's defaults.

    A new group member joins after about half the session timeout, so tests pass a short one.
    """
    brokers = [f"kafka://{address.strip()}" for address in bootstrap.split(",") if address]
    options: dict[str, Any] = {
        "broker": brokers,
        "store": store,
        "web_enabled": False,
        "broker_session_timeout": session_timeout,
        "broker_heartbeat_interval": heartbeat_interval,
        # The leader topic is only for Faust's own leader election, which Cocoon does not use.
        "topic_disable_leader": True,
    }
    options.update(settings)
    app = faust.App(app_id, **options)
    if traced:
        instrument_faust_app(app)
    return app


async def start_app(app: faust.App) -> None:
    """Start `app` (consumer, producer, agents) in the running event loop, without a Worker
    (which would take over signals and logging that cocoon.core.runtime owns)."""
    await app.start()


async def stop_app(app: faust.App) -> None:
    """Stop agents, commit what was processed, and close the app's clients."""
    await app.stop()


class FaustService(Service):
    """Runs a Faust app under cocoon.core.runtime.

    Stopping happens inside `run`, so the runtime's grace period covers it: Faust's own stop
    halts the flow of new events, waits until every event an agent started is acknowledged,
    commits, then closes its clients. Cancelled past the grace period, unacknowledged events
    are not committed and Kafka redelivers them.
    """

    def __init__(self, app: faust.App, name: str) -> None:
        self.app = app
        self.name = name

    async def start(self) -> None:
        await start_app(self.app)

    async def run(self, stopping: asyncio.Event) -> None:
        stop_wait = asyncio.ensure_future(stopping.wait())
        app_stopped = asyncio.ensure_future(self.app.wait_until_stopped())
        try:
            await asyncio.wait({stop_wait, app_stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            app_stopped.cancel()
        if self.app.crash_reason is not None:
            raise RuntimeError(f"Faust app crashed: {self.app.crash_reason!r}")
        await stop_app(self.app)

    async def close(self) -> None:
        if not self.app.should_stop:
            await stop_app(self.app)
