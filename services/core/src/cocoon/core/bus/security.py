"""How every Kafka client of a service connects: SASL/SCRAM over TLS, mTLS, or plaintext.

Brokers (the local one of `cocoon kafka start` and production's) have one client listener,
SASL_SSL with SCRAM-SHA-512: a service proves who it is with its principal's password, over TLS
verified against the cluster CA. Client certificates (mTLS, Strimzi's `tls` authentication) are
the alternative. The settings, read from the environment as the topic prefix is:

    COCOON_KAFKA_SECURITY_PROTOCOL     SASL_SSL, SSL or PLAINTEXT (the default, for a bare broker)
    COCOON_KAFKA_SSL_CAFILE            CA bundle the broker's certificate must chain to
    COCOON_KAFKA_SSL_CERTFILE          the client certificate (PEM), for mTLS
    COCOON_KAFKA_SSL_KEYFILE           its private key (PEM, unencrypted)
    COCOON_KAFKA_SASL_USERNAME         the principal (SASL_SSL)
    COCOON_KAFKA_SASL_PASSWORD         its SCRAM password, or
    COCOON_KAFKA_SASL_PASSWORD_FILE    a file holding it (a mounted Secret)

Every client (aiokafka and kafka-python alike) is built with these; `ServiceSettings` checks
them at start, so a pod with a missing file or password exits at once with the variable's name
instead of retrying a handshake forever.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Protocol = Literal["PLAINTEXT", "SSL", "SASL_SSL"]
PROTOCOLS: tuple[Protocol, ...] = ("PLAINTEXT", "SSL", "SASL_SSL")
SASL_MECHANISM = "SCRAM-SHA-512"
ENV = {
    "protocol": "COCOON_KAFKA_SECURITY_PROTOCOL",
    "cafile": "COCOON_KAFKA_SSL_CAFILE",
    "certfile": "COCOON_KAFKA_SSL_CERTFILE",
    "keyfile": "COCOON_KAFKA_SSL_KEYFILE",
    "username": "COCOON_KAFKA_SASL_USERNAME",
    "password": "COCOON_KAFKA_SASL_PASSWORD",
    "password_file": "COCOON_KAFKA_SASL_PASSWORD_FILE",
}


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: Protocol = "PLAINTEXT"
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never print the password
        return f"KafkaSecurity({self.protocol}, user={self.username!r}, cafile={self.cafile})"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"{ENV['protocol']} must be one of {PROTOCOLS}, got {self.protocol!r}")
        files = {name: getattr(self, name) for name in ("cafile", "certfile", "keyfile")}
        sasl = {"username": self.username, "password": self.password}
        if self.protocol != "SASL_SSL":
            given = [ENV[name] for name, value in sasl.items() if value]
            if given:
                raise ValueError(f"{', '.join(given)} set but {ENV['protocol']} is {self.protocol}")
        if self.protocol == "PLAINTEXT":
            given = [ENV[name] for name, path in files.items() if path is not None]
            if given:
                # TLS material without TLS is a configuration mistake, not a preference.
                raise ValueError(f"{', '.join(given)} set but {ENV['protocol']} is PLAINTEXT")
            return
        if self.cafile is None:
            raise ValueError(f"{ENV['protocol']}={self.protocol} needs {ENV['cafile']}")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError(f"set both {ENV['certfile']} and {ENV['keyfile']}, or neither")
        for name, path in files.items():
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"{ENV[name]}={path}: no such readable file")
        if self.protocol == "SASL_SSL" and not (self.username and self.password):
            raise ValueError(
                f"{ENV['protocol']}=SASL_SSL needs {ENV['username']} and {ENV['password']} "
                f"(or {ENV['password_file']})"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        """The settings in `env` (default: this process's environment). With no broker and no
        protocol set, a command-line tool talks to the local developer broker (as
        `cocoon.core.bus.admin.default_bootstrap` does): then as its admin, when it exists."""
        if env is None:
            env = os.environ
            if not env.get("COCOON_KAFKA_BOOTSTRAP") and not env.get(ENV["protocol"]):
                local = _local_admin()
                if local is not None:
                    return local

        def path(name: str) -> Path | None:
            value = env.get(ENV[name])
            return Path(value) if value else None

        protocol = (env.get(ENV["protocol"]) or "PLAINTEXT").upper()
        return cls(
            protocol,  # type: ignore[arg-type]
            path("cafile"),
            path("certfile"),
            path("keyfile"),
            env.get(ENV["username"]) or None,
            read_password(env.get(ENV["password"]), path("password_file")),
        )

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
        kwargs: dict[str, Any] = {
            "security_protocol": self.protocol,
            "ssl_context": self.ssl_context(),
        }
        if self.protocol == "SASL_SSL":
            kwargs |= {
                "sasl_mechanism": SASL_MECHANISM,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password,
            }
        return kwargs

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's clients (the topic admin)."""
        if self.protocol == "PLAINTEXT":
            return {}
        kwargs: dict[str, Any] = {
            "security_protocol": self.protocol,
            "ssl_cafile": str(self.cafile),
            "ssl_certfile": str(self.certfile) if self.certfile else None,
            "ssl_keyfile": str(self.keyfile) if self.keyfile else None,
        }
        if self.protocol == "SASL_SSL":
            kwargs |= {
                "sasl_mechanism": SASL_MECHANISM,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password,
            }
        return kwargs

    def env(self, password_file: Path | None = None) -> dict[str, str]:
        """The COCOON_KAFKA_* variables that make `from_env` return these settings; the
        password goes by file when one is given (child processes then never see it in env)."""
        values = {
            ENV["protocol"]: self.protocol,
            ENV["cafile"]: str(self.cafile or ""),
            ENV["certfile"]: str(self.certfile or ""),
            ENV["keyfile"]: str(self.keyfile or ""),
            ENV["username"]: self.username or "",
        }
        if password_file is not None:
            values[ENV["password_file"]] = str(password_file)
            values[ENV["password"]] = ""
        else:
            values[ENV["password"]] = self.password or ""
            values[ENV["password_file"]] = ""
        return values


def _local_admin() -> KafkaSecurity | None:
    from cocoon.core.kafka.broker import default_layout  # the broker module imports this one

    layout = default_layout()
    return layout.admin_security() if layout.secrets.complete else None


def read_password(value: str | None, file: Path | None) -> str | None:
    """The SASL password given directly or by file (one of them; a file's trailing newline
    is not part of it)."""
    if value and file is not None:
        raise ValueError(f"set {ENV['password']} or {ENV['password_file']}, not both")
    if file is None:
        return value or None
    try:
        return file.read_text().strip() or None
    except OSError as exc:
        raise ValueError(f"{ENV['password_file']}={file}: {exc.strerror}") from exc


def aiokafka_security() -> dict[str, Any]:
    """aiokafka connection arguments from this process's environment."""
    return KafkaSecurity.from_env().aiokafka()


def kafka_python_security() -> dict[str, Any]:
    """kafka-python connection arguments from this process's environment."""
    return KafkaSecurity.from_env().kafka_python()
