"""`cocoon client ...`: the client's commands under the `cocoon` CLI (where cocoon-core is
installed; the client alone has `cocoon-client`). Arguments go to `cocoon.client.cli`."""

from __future__ import annotations

import typer

from cocoon.client import cli

app = typer.Typer(help="The client that verifies workers and seals requests itself.")
_PASS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _forward(command: str) -> None:
    @app.command(command, context_settings=_PASS, help=f"cocoon-client {command} --help")
    def run(ctx: typer.Context) -> None:
        raise typer.Exit(cli.main([command, *ctx.args]))


for _command in ("serve", "verify", "receipts", "audit"):
    _forward(_command)
