"""How every Kafka client of a service connects: plaintext, or TLS with a client certificate.

Production brokers have one listener, mTLS on 9093 (Strimzi's `tls` listener): a service proves
who it is with its KafkaUser's certificate, which the chart mounts with the cluster CA. The chart
passes the files as

    COCOON_KAFKA_SECURITY_PROTOCOL   PLAINTEXT (default) or SSL
    COCOON_KAFKA_SSL_CAFILE          CA bundle the broker's certificate must chain to (SSL)
    COCOON_KAFKA_SSL_CERTFILE        the client certificate (PEM), for mTLS
    COCOON_KAFKA_SSL_KEYFILE         its private key (PEM, unencrypted)

Every client (aiokafka and kafka-python alike) is built with these, read from the environment
as the topic prefix is; `ServiceSettings` checks them at start, so a pod with a missing file
exits at once with the variable's name instead of retrying a handshake forever.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Protocol = Literal["PLAINTEXT", "SSL"]
PROTOCOLS: tuple[Protocol, ...] = ("PLAINTEXT", "SSL")
ENV = {
    "protocol": "COCOON_KAFKA_SECURITY_PROTOCOL",
    "cafile": "COCOON_KAFKA_SSL_CAFILE",
    "certfile": "COCOON_KAFKA_SSL_CERTFILE",
    "keyfile": "COCOON_KAFKA_SSL_KEYFILE",
}


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: Protocol = "PLAINTEXT"
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"{ENV['protocol']} must be one of {PROTOCOLS}, got {self.protocol!r}")
        files = {name: getattr(self, name) for name in ("cafile", "certfile", "keyfile")}
        if self.protocol == "PLAINTEXT":
            given = [ENV[name] for name, path in files.items() if path is not None]
            if given:
                # TLS material without TLS is a configuration mistake, not a preference.
                raise ValueError(f"{', '.join(given)} set but {ENV['protocol']} is PLAINTEXT")
            return
        if self.cafile is None:
            raise ValueError(f"{ENV['protocol']}=SSL needs {ENV['cafile']}")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError(f"set both {ENV['certfile']} and {ENV['keyfile']}, or neither")
        for name, path in files.items():
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"{ENV[name]}={path}: no such readable file")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        env = os.environ if env is None else env

        def path(name: str) -> Path | None:
            value = env.get(ENV[name])
            return Path(value) if value else None

        protocol = (env.get(ENV["protocol"]) or "PLAINTEXT").upper()
        return cls(protocol, path("cafile"), path("certfile"), path("keyfile"))  # type: ignore[arg-type]

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the broker against the CA (and its host name); presents the client cert."""
        context = ssl.create_default_context(cafile=str(self.cafile))
        # TLS 1.2. Over TLS 1.3, closing aiokafka clients at shutdown hung past the runtime's
        # 10 s close limit in 1 to 3 of 4 services per boot-test run (exit 1 on SIGTERM; likely
        # the Java broker not answering close_notify, which TLS 1.3 permits); capped at 1.2,
        # every stop was clean. Revisit with a newer aiokafka or broker.
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        if self.certfile is not None:
            context.load_cert_chain(str(self.certfile), str(self.keyfile))
        return context

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producers, consumers and admin client."""
        if self.protocol == "PLAINTEXT":
            return {}
        return {"security_protocol": "SSL", "ssl_context": self.ssl_context()}

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's clients (the topic admin)."""
        if self.protocol == "PLAINTEXT":
            return {}
        return {
            "security_protocol": "SSL",
            "ssl_cafile": str(self.cafile),
            "ssl_certfile": str(self.certfile) if self.certfile else None,
            "ssl_keyfile": str(self.keyfile) if self.keyfile else None,
        }


def aiokafka_security() -> dict[str, Any]:
    """aiokafka connection arguments from this process's environment."""
    return KafkaSecurity.from_env().aiokafka()


def kafka_python_security() -> dict[str, Any]:
    """kafka-python connection arguments from this process's environment."""
    return KafkaSecurity.from_env().kafka_python()
