"""`cocoon worker init`: the configuration it writes is what `worker run` starts with, and a
payout address that could lose the owner's earnings is refused with a reason."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cocoon.core.runtime.settings import CONFIG_FILE_ENV, load_settings
from cocoon.core.ton_address import TonAddress, crc16_xmodem
from cocoon.worker_proxy.cli import app
from cocoon.worker_proxy.service import Settings

ACCOUNT = bytes(range(32))
OWNER = TonAddress(0, ACCOUNT)


def friendly_with_tag(tag: int, workchain: int = 0) -> str:
    body = bytes([tag, workchain & 0xFF]) + ACCOUNT
    return base64.urlsafe_b64encode(body + crc16_xmodem(body).to_bytes(2, "big")).decode()


def init(tmp_path: Path, address: str, *extra: str) -> tuple[int, str, Path]:
    config = tmp_path / "worker.toml"
    args = ["init", "--payout-address", address, "--worker-id", "gpu-1"]
    args += ["--model", "smollm2-135m-instruct", "--config", str(config), *extra]
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output, config


def test_init_writes_the_settings_the_worker_proxy_runs_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment outranks the file (docs/observability.md): earlier tests may have set it.
    monkeypatch.delenv("COCOON_KAFKA_BOOTSTRAP", raising=False)
    extra = ["--coefficient", "1200", "--capacity", "8", "--bootstrap", "10.0.0.5:9092"]
    extra += ["--engine-url", "http://10.0.0.7:8000/v1"]
    code, output, config = init(tmp_path, OWNER.friendly(), *extra)
    assert code == 0, output
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config))
    settings = load_settings(Settings)
    assert settings.payout_address == OWNER.raw
    assert (settings.worker_id, settings.model) == ("gpu-1", "smollm2-135m-instruct")
    assert (settings.coefficient, settings.max_active_requests) == (1200, 8)
    assert settings.kafka_bootstrap == "10.0.0.5:9092"
    assert settings.engine_url == "http://10.0.0.7:8000/v1"
    assert settings.receipts_file is not None and settings.receipts_file.name.endswith(".jsonl")


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        (OWNER.friendly()[:-1] + ("A" if OWNER.friendly()[-1] != "A" else "B"), "checksum"),
        (friendly_with_tag(0x22), "unknown tag"),
        ("5:" + ACCOUNT.hex(), "workchain"),
        ("0:" + ACCOUNT.hex()[:-2], "neither a raw address"),
    ],
)
def test_init_refuses_a_bad_payout_address_and_writes_nothing(
    tmp_path: Path, address: str, reason: str
) -> None:
    code, output, config = init(tmp_path, address)
    assert code != 0 and reason in output and "payout address" in output
    assert not config.exists()


def test_init_notes_a_bounceable_address_and_keeps_an_existing_config(tmp_path: Path) -> None:
    code, output, config = init(tmp_path, OWNER.friendly(bounceable=True))
    assert code == 0 and "bounceable" in output
    before = config.read_text()
    code, output, _ = init(tmp_path, OWNER.raw, "--coefficient", "900")
    assert code != 0 and "--force" in output and config.read_text() == before
    code, output, _ = init(tmp_path, OWNER.raw, "--coefficient", "900", "--force")
    assert code == 0 and "coefficient = 900" in config.read_text()


def test_init_refuses_a_worker_id_that_cannot_name_a_topic(tmp_path: Path) -> None:
    code, output, config = init(tmp_path, OWNER.raw, "--worker-id", "GPU_1")
    assert code != 0 and "worker id" in output and not config.exists()


def test_run_without_a_configuration_says_to_init(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code != 0 and "cocoon worker init" in result.output


def test_init_without_a_capacity_leaves_it_to_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output, config = init(tmp_path, OWNER.friendly())
    assert code == 0, output
    assert "max_active_requests" not in config.read_text()
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config))
    assert load_settings(Settings).max_active_requests is None  # asked from the engine at start
