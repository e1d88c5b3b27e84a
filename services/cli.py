"""The `cocoon` command line: one root app, each area contributing its own sub-app.

Sub-apps are imported lazily by module path so a service's CLI lives beside its code
and this module never reaches into a service's internals.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    help="Cocoon: confidential AI inference on Apache Kafka.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# name -> "module:attribute" of a typer.Typer. Modules that are not there yet are skipped.
SUBCOMMANDS: dict[str, str] = {
    "kafka": "cocoon.core.kafka.cli:app",
    "topics": "cocoon.core.topics_cli:app",
    "run": "cocoon.core.runtime.cli:app",
    "attest": "cocoon.attestation.cli:attest_app",
    "registry": "cocoon.attestation.cli:registry_app",
    "billing": "cocoon.billing.cli:app",
}

# name -> "module:function" for single commands at the top level.
COMMANDS: dict[str, str] = {
    "up": "cocoon.network.cli:up",
    "chat": "cocoon.network.cli:chat",
    "status": "cocoon.network.cli:status",
}


def _load(target: str):
    module_name, attribute = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return None
        raise
    return getattr(module, attribute)


def build() -> typer.Typer:
    for name, target in SUBCOMMANDS.items():
        sub = _load(target)
        if sub is not None:
            app.add_typer(sub, name=name)
    for name, target in COMMANDS.items():
        func = _load(target)
        if func is not None:
            app.command(name)(func)
    return app


def main() -> None:
    build()()


if __name__ == "__main__":
    main()
