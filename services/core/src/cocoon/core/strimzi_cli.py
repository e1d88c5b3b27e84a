"""`cocoon topics strimzi`: write the Strimzi KafkaTopic/KafkaUser manifests of the catalog.

Registered under `cocoon topics` by the root CLI; the rendering lives in `cocoon.core.strimzi`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cocoon.core.catalog import load_catalog
from cocoon.core.strimzi import render_files

app = typer.Typer(help="Strimzi manifests rendered from the topic catalog.")


@app.command("strimzi")
def strimzi(
    out: Annotated[Path, typer.Option(help="Directory for kafka-topics.yaml, kafka-users.yaml.")],
    catalog: Annotated[
        Path | None, typer.Option(help="Catalog directory (default schemas/topics/).")
    ] = None,
    prefix: Annotated[
        str, typer.Option(help="Prepended to every topic, group and transactional id.")
    ] = "",
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if a file is out of date.")
    ] = False,
) -> None:
    """Render KafkaTopic (one per topic and DLQ) and KafkaUser (ACLs per service) manifests."""
    files = render_files(load_catalog(catalog), prefix=prefix)
    stale = [name for name, text in files.items() if _read(out / name) != text]
    if check:
        for name in stale:
            typer.echo(f"out of date: {out / name}", err=True)
        raise typer.Exit(1 if stale else 0)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        typer.echo(f"{'wrote' if name in stale else 'unchanged'} {out / name}")


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None
