"""The `cocoon` command line: one root app, each installed distribution contributing its own.

A distribution adds commands through the `cocoon.cli` entry-point group: a `typer.Typer`
becomes a command group of that name, a function a single command. Only what is installed
shows up, so the worker-proxy image's `cocoon` has no billing or gateway commands.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import typer

ENTRY_POINT_GROUP = "cocoon.cli"

app = typer.Typer(
    help="Cocoon: confidential AI inference on Apache Kafka.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def build() -> typer.Typer:
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        target = entry.load()
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=entry.name)
        else:
            app.command(entry.name)(target)
    return app


def main() -> None:
    build()()


if __name__ == "__main__":
    main()
