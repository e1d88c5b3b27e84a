"""Faust apps with Cocoon's defaults, and running one inside an asyncio program.

Defaults chosen from experience with faust-streaming 0.15.3 against Kafka 4.x: no web server
(services expose gRPC health and /metrics through cocoon.core.runtime instead), an in-memory
table store unless asked otherwise, and OpenTelemetry tracing of every event and send.
"""

from __future__ import annotations

from typing import Any

import faust

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
