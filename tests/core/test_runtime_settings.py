"""Settings: environment, YAML/TOML files, and error messages an operator can act on."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cocoon.core.runtime.cli import app
from cocoon.core.runtime.settings import ServiceSettings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("COCOON_CONFIG_FILE", "COCOON_KAFKA_BOOTSTRAP", "COCOON_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)


def test_every_invalid_value_is_reported_with_its_variable(monkeypatch):
    monkeypatch.setenv("COCOON_GRPC_HEALTH_PORT", "70000")
    monkeypatch.setenv("COCOON_LOG_FORMAT", "xml")
    monkeypatch.setenv("COCOON_KAFKA_BOOTSTRAP", "broker-without-port")
    with pytest.raises(SettingsError) as caught:
        load_settings(ServiceSettings)
    message = str(caught.value)
    assert message.startswith("invalid configuration for ServiceSettings:")
    assert "grpc_health_port (from COCOON_GRPC_HEALTH_PORT)" in message
    assert "less than or equal to 65535" in message
    assert "log_format (from COCOON_LOG_FORMAT)" in message
    assert "'broker-without-port' is not host:port" in message


def test_yaml_file_is_read_and_environment_wins(monkeypatch, tmp_path: Path):
    config = tmp_path / "svc.yaml"
    config.write_text("kafka_bootstrap: kafka-1:9092, kafka-2:9092\nlog_level: debug\n")
    monkeypatch.setenv("COCOON_CONFIG_FILE", str(config))
    monkeypatch.setenv("COCOON_LOG_LEVEL", "warning")
    settings = load_settings(ServiceSettings)
    assert settings.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert settings.log_level == "WARNING"


def test_toml_file_typo_is_named(monkeypatch, tmp_path: Path):
    config = tmp_path / "svc.toml"
    config.write_text('metrics_prot = 9100\nlog_format = "human"\n')
    monkeypatch.setenv("COCOON_CONFIG_FILE", str(config))
    with pytest.raises(SettingsError, match=r"metrics_prot: unknown setting in .*svc\.toml"):
        load_settings(ServiceSettings)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.yaml", None, "no such file"),
        ("svc.ini", "x=1", "use a .yaml, .yml or .toml file"),
        ("broken.yaml", "log_level: [unclosed", "cannot parse"),
    ],
)
def test_unusable_config_file(monkeypatch, tmp_path: Path, name, content, expected):
    config = tmp_path / name
    if content is not None:
        config.write_text(content)
    monkeypatch.setenv("COCOON_CONFIG_FILE", str(config))
    with pytest.raises(SettingsError, match=expected):
        load_settings(ServiceSettings)


def _run_cli(*args: str) -> tuple[int, str]:
    """`cocoon run ...` as the root CLI mounts it."""
    root = typer.Typer()
    root.add_typer(app, name="run")
    result = CliRunner().invoke(root, ["run", *args])
    return result.exit_code, result.output


def test_cli_names_unknown_and_missing_services():
    code, output = _run_cli("teleporter")
    assert code == 2
    assert "unknown service 'teleporter'; known services: gateway" in output
    code, output = _run_cli("cocoon.no_such_service:build")
    assert code == 2
    assert "is not implemented yet (no module cocoon.no_such_service)" in output


def test_cli_reports_bad_settings_before_starting(monkeypatch):
    monkeypatch.setenv("COCOON_SHUTDOWN_GRACE_SECONDS", "-1")
    code, output = _run_cli("test_runtime_process:build")
    assert code == 2
    assert "shutdown_grace_seconds (from COCOON_SHUTDOWN_GRACE_SECONDS)" in output
    assert "relay_input (set COCOON_RELAY_INPUT): Field required" in output
