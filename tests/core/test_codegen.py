"""The generated Python of schemas/ (`cocoon topics codegen`) is committed and up to date."""

from __future__ import annotations

import shutil

import typer
from support.repo import REPO_ROOT, SERVICES_DIR
from typer.testing import CliRunner

from cocoon.core.codegen import MODELS_MODULE, render_all, stale_files
from cocoon.core.topics_cli import app as topics_app

CORE_SRC = SERVICES_DIR / "core" / "src"


def _check(*args: str) -> int:
    root = typer.Typer()
    root.add_typer(topics_app, name="topics")
    result = CliRunner().invoke(
        root, ["topics", "codegen", "--src", str(CORE_SRC), "--check", *args]
    )
    return result.exit_code


def test_committed_generated_code_is_up_to_date():
    stale = stale_files(CORE_SRC, render_all())
    assert not stale, f"{stale} are stale: run `cocoon topics codegen`"
    assert _check() == 0


def test_a_schema_change_makes_the_generated_code_stale(tmp_path):
    """The up-to-date check can fail: a field added to the latest Heartbeat changes the models."""
    schemas = tmp_path / "schemas"
    shutil.copytree(REPO_ROOT / "schemas", schemas)
    latest = schemas / "avro" / "cocoon.worker.Heartbeat" / "v4.avsc"
    latest.write_text(
        latest.read_text().replace(
            '"fields": [',
            '"fields": [{"name": "zone", "type": ["null", "string"], "default": null},',
            1,
        )
    )
    changed = render_all(schemas)[MODELS_MODULE]
    assert "    zone: str | None = Field(default=None)" in changed
    assert stale_files(CORE_SRC, {MODELS_MODULE: changed}) == [CORE_SRC / MODELS_MODULE]
    assert _check("--schemas", str(schemas)) == 1
