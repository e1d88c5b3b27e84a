"""A Faust-based service under the runtime drains its in-flight event on SIGTERM.

The subprocess loads `test_runtime_faust:build` (below) through `python -m cocoon.core.runtime`.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from test_runtime_process import (
    RelayProcess,
    RelaySettings,
    _committed,
    _create_topics,
    _names,
    _produce_traced,
    _read_output,
)

from cocoon.core.faust_support import FaustService, create_app

Settings = RelaySettings
log = logging.getLogger("faust-relay")


def build(settings: RelaySettings) -> FaustService:
    app = create_app(
        settings.relay_group,
        settings.kafka_bootstrap,
        session_timeout=6.0,
        heartbeat_interval=2.0,
    )
    source = app.topic(settings.relay_input, key_serializer="raw", value_serializer="raw")
    sink = app.topic(settings.relay_output, key_serializer="raw", value_serializer="raw")

    @app.agent(source)
    async def relay(stream):
        async for event in stream.events():
            log.info("relaying", extra={"offset": event.message.offset})
            await asyncio.sleep(settings.relay_work_seconds)
            await sink.send(key=event.key, value=event.value)
            log.info("relayed", extra={"offset": event.message.offset})

    return FaustService(app, "relay")


async def test_faust_service_finishes_its_event_on_sigterm(kafka_bootstrap, unique_name):
    names = _names(unique_name)
    _create_topics(kafka_bootstrap, names["input"], names["output"])
    trace_id = await _produce_traced(kafka_bootstrap, names["input"])
    relay = RelayProcess(
        kafka_bootstrap, names, work_s=2.0, grace_s=10.0, target="test_runtime_faust:build"
    )
    await relay.start()
    try:
        await relay.wait_health("SERVING", 20)
        relaying = await relay.wait_log("relaying", 25)
        relay.proc.send_signal(signal.SIGTERM)
        await relay.wait_health("NOT_SERVING", 1.5)
        code = await relay.wait_exit(12)
    finally:
        relay.kill()

    assert code == 0, "\n".join(relay.raw)
    assert relaying["trace_id"] == format(trace_id, "032x")
    assert any(entry["message"] == "relayed" for entry in relay.logs)
    assert _committed(kafka_bootstrap, names["group"], names["input"]) == 1
    [relayed] = await _read_output(kafka_bootstrap, names["output"])
    assert dict(relayed.headers)["traceparent"].decode().split("-")[1] == format(trace_id, "032x")
