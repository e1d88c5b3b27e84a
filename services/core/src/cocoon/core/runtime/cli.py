"""`cocoon run <service>`: one service in the foreground, stopped by SIGTERM or Ctrl-C."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from cocoon.core.runtime.resolve import SERVICES, ServiceNotFound, resolve
from cocoon.core.runtime.service import EXIT_CONFIG, run_service
from cocoon.core.runtime.settings import CONFIG_FILE_ENV, SettingsError, load_settings

app = typer.Typer(
    help="Run one Cocoon service: " + ", ".join(SERVICES) + " (or module:function).",
    # A group whose only job is its callback: options may follow the service name.
    context_settings={"allow_interspersed_args": True},
    subcommand_metavar="",
    pretty_exceptions_show_locals=False,
)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"cocoon run: {message}", err=True)
    return typer.Exit(EXIT_CONFIG)


@app.callback(invoke_without_command=True)
def run(
    service: Annotated[
        str, typer.Argument(help="service name, or module:function for a custom one")
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help=f"YAML or TOML settings file (else ${CONFIG_FILE_ENV})"
        ),
    ] = None,
) -> None:
    if config is not None:
        os.environ[CONFIG_FILE_ENV] = str(config)
    try:
        entry = resolve(service)
        settings = load_settings(entry.settings_cls)
    except (ServiceNotFound, SettingsError) as exc:
        raise _fail(str(exc)) from None
    if settings.service_name is None and entry.name is not None:
        settings = settings.model_copy(update={"service_name": entry.name})
    raise typer.Exit(run_service(lambda: entry.build(settings), settings))


def main(argv: list[str] | None = None) -> None:
    """`python -m cocoon.core.runtime <service>`: the same as `cocoon run <service>`."""
    root = typer.Typer(add_completion=False)
    root.add_typer(app, name="run")
    root(args=["run", *(sys.argv[1:] if argv is None else argv)], prog_name="cocoon")
