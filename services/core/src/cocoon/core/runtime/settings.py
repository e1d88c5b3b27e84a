"""Service settings: environment (`COCOON_*`), an optional YAML/TOML file, then defaults.

Precedence: values passed in code > environment > `COCOON_CONFIG_FILE` > defaults. Every
invalid value is reported at once, naming the environment variable or file that supplied it.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from cocoon.core.bus.security import KafkaSecurity, read_password

ENV_PREFIX = "COCOON_"
CONFIG_FILE_ENV = "COCOON_CONFIG_FILE"


class SettingsError(ValueError):
    """Configuration that cannot be used; the message is meant for the operator."""


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _config_file() -> Path | None:
    value = os.environ.get(CONFIG_FILE_ENV)
    return Path(value) if value else None


class ServiceSettings(BaseSettings):
    """What every Cocoon service needs; a service subclasses it to add its own fields."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=True
    )

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="host:port[,host:port...]")
    # How the Kafka clients connect (cocoon.core.bus.security, which the clients read from the
    # same variables): checked here so a pod with a missing certificate exits at start.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = "PLAINTEXT"
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = None
    # dev, staging, prod, ...: anything but `dev` is production, where development shortcuts
    # (the simulated TEE, trusting its test root) are refused unless explicitly allowed.
    environment: str = Field("dev", min_length=1, description="deployment environment")
    service_name: str | None = Field(None, description="defaults to the service's own name")
    instance_id: str = Field(default_factory=_default_instance_id)
    listen_host: str = Field("127.0.0.1", description="address for health and metrics")
    grpc_health_port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 picks a free port")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "human"] = "json"
    otlp_endpoint: str | None = Field(None, description="else OTEL_EXPORTER_OTLP_ENDPOINT")
    traces_console: bool = False
    shutdown_grace_seconds: float = Field(20.0, gt=0, le=600)
    # uvloop: libuv's event loop, faster per socket read/write than asyncio's own, on every hop
    # of a request (docs/performance.md).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    @field_validator("log_level", "log_format", "kafka_security_protocol", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, str):
            return value
        return value.lower() if info.field_name == "log_format" else value.upper()

    @field_validator(
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_sasl_password_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # A launcher clears an inherited setting by passing it empty (cocoon up, the e2e tests).
        return None if value == "" else value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_addresses(cls, value: str) -> str:
        addresses = [part.strip() for part in value.split(",") if part.strip()]
        if not addresses:
            raise ValueError("needs at least one host:port")
        for address in addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{address!r} is not host:port")
        return ",".join(addresses)

    @model_validator(mode="after")
    def _kafka_security(self) -> ServiceSettings:
        password = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
        KafkaSecurity(
            self.kafka_security_protocol,
            self.kafka_ssl_cafile,
            self.kafka_ssl_certfile,
            self.kafka_ssl_keyfile,
            self.kafka_sasl_username or None,
            read_password(password, self.kafka_sasl_password_file),
        )
        return self

    @property
    def production(self) -> bool:
        return self.environment != "dev"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file()
        if path is None:
            return init_settings, env_settings
        if not path.is_file():
            raise SettingsError(f"{CONFIG_FILE_ENV}={path}: no such file")
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            file_source: PydanticBaseSettingsSource = YamlConfigSettingsSource(settings_cls, path)
        elif suffix == ".toml":
            file_source = TomlConfigSettingsSource(settings_cls, path)
        else:
            raise SettingsError(
                f"{CONFIG_FILE_ENV}={path}: use a .yaml, .yml or .toml file (got {suffix!r})"
            )
        return init_settings, env_settings, file_source


def _describe(error: Mapping[str, Any], settings_cls: type[ServiceSettings]) -> str:
    if not error["loc"]:  # a check across fields: its message names the variables
        return str(error["msg"]).removeprefix("Value error, ")
    field = ".".join(str(part) for part in error["loc"])
    top = str(error["loc"][0]) if error["loc"] else ""
    env_name = f"{ENV_PREFIX}{top.upper()}"
    if error["type"] == "extra_forbidden":
        origin = f" in {_config_file()}" if _config_file() else ""
        return f"{field}: unknown setting{origin}"
    if env_name in os.environ:
        origin = f"from {env_name}"
    elif _config_file():
        origin = f"from {_config_file()} or default"
    else:
        origin = f"set {env_name}"
    message = error["msg"].removeprefix("Value error, ")
    shown = error.get("input")
    got = "" if shown is None or isinstance(shown, dict) else f" (got {shown!r})"
    return f"{field} ({origin}): {message}{got}"


S = TypeVar("S", bound="ServiceSettings")


def load_settings(settings_cls: type[S], **overrides: Any) -> S:
    """Build `settings_cls` from code overrides, environment and config file, or raise
    SettingsError listing every problem in operator terms."""
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        lines = [_describe(error, settings_cls) for error in exc.errors()]
        raise SettingsError(
            f"invalid configuration for {settings_cls.__name__}:\n  " + "\n  ".join(lines)
        ) from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{CONFIG_FILE_ENV}={_config_file()}: cannot parse: {exc}") from None
