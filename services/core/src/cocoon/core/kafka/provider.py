"""Which broker Cocoon talks to: one setting decides, and the tests use the same one.

`COCOON_KAFKA_BOOTSTRAP=host:port` points everything at an external cluster. Otherwise
`COCOON_KAFKA_PROVIDER` picks `local` (the default: a broker fetched from Maven Central and run
on loopback) or `testcontainers` (where a Docker engine exists).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from cocoon.core.kafka import broker

PROVIDERS = ("local", "testcontainers", "external")


def selected_provider() -> str:
    if os.environ.get("COCOON_KAFKA_BOOTSTRAP"):
        return "external"
    provider = os.environ.get("COCOON_KAFKA_PROVIDER", "local")
    if provider not in PROVIDERS:
        raise broker.BrokerError(
            f"COCOON_KAFKA_PROVIDER={provider!r} is not one of {', '.join(PROVIDERS)}"
        )
    if provider == "external":
        raise broker.BrokerError("COCOON_KAFKA_PROVIDER=external needs COCOON_KAFKA_BOOTSTRAP")
    return provider


@contextlib.contextmanager
def provide_broker(
    home: Path, port: int, *, tls: broker.BrokerTls | None = None, echo=print
) -> Iterator[str]:
    """Yield a bootstrap address for the selected provider; tear down what was started.

    `tls` adds an mTLS listener to the local broker (the other providers ignore it)."""
    provider = selected_provider()
    if provider == "external":
        yield os.environ["COCOON_KAFKA_BOOTSTRAP"]
        return
    if provider == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    layout = broker.BrokerLayout(home=home, port=port, controller_port=port + 1, tls=tls)
    bootstrap = broker.start(layout, echo=echo)
    try:
        yield bootstrap
    finally:
        broker.stop(layout)
