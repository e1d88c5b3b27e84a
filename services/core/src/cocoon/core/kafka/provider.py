"""Which broker Cocoon talks to: one setting decides, and the tests use the same one.

`COCOON_KAFKA_BOOTSTRAP=host:port` (with the COCOON_KAFKA_* security settings,
cocoon.core.bus.security) points everything at an external cluster. Otherwise
`COCOON_KAFKA_PROVIDER` picks `local` (the default: a broker fetched from Maven Central and run
on loopback) or `testcontainers` (where a Docker engine exists).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cocoon.core.bus.security import KafkaSecurity
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


@dataclass(frozen=True)
class ProvidedBroker:
    """Where the broker is, and how an administrator (topics, users, ACLs) connects to it."""

    bootstrap: str
    admin: KafkaSecurity
    # The local broker's password file for `admin` (so child processes get a file, not a value).
    admin_password_file: Path | None = None

    def admin_env(self) -> dict[str, str]:
        """The COCOON_KAFKA_* variables of the admin principal."""
        return {
            "COCOON_KAFKA_BOOTSTRAP": self.bootstrap,
            **self.admin.env(self.admin_password_file),
        }


@contextlib.contextmanager
def provide_broker(
    home: Path, port: int, *, tls: broker.BrokerTls | None = None, echo=print
) -> Iterator[ProvidedBroker]:
    """Yield the selected provider's broker; tear down what was started.

    The local broker is secured (SASL_SSL, ACLs); an external one is reached with the
    COCOON_KAFKA_* security settings of this process, as the services reach it. `tls` adds an
    mTLS listener to the local broker (the other providers ignore it)."""
    provider = selected_provider()
    if provider == "external":
        yield ProvidedBroker(os.environ["COCOON_KAFKA_BOOTSTRAP"], KafkaSecurity.from_env())
        return
    if provider == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield ProvidedBroker(container.get_bootstrap_server(), KafkaSecurity())
        return
    layout = broker.BrokerLayout(home=home, port=port, controller_port=port + 1, tls=tls)
    bootstrap = broker.start(layout, echo=echo)
    try:
        yield ProvidedBroker(
            bootstrap, layout.admin_security(), layout.secrets.password_file(broker.pki.ADMIN)
        )
    finally:
        broker.stop(layout)
