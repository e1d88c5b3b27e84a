"""`cocoon topics`: provision the catalog's topics on a broker and look at what is there."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from kafka.errors import SecurityDisabledError
from rich.console import Console
from rich.table import Table

from cocoon.core.acls import principal_acls
from cocoon.core.bus.admin import (
    TopicChange,
    apply_topics,
    catalog_topics,
    default_bootstrap,
    instance_topics,
    list_topics,
)
from cocoon.core.bus.principals import provision, prune
from cocoon.core.bus.settings import topic_prefix
from cocoon.core.catalog import load_catalog, topic_config
from cocoon.core.codegen import render_all, source_root, stale_files
from cocoon.core.kafka.broker import default_layout
from cocoon.core.strimzi_cli import app as strimzi_app

app = typer.Typer(help="Kafka topics from the catalog in schemas/topics/.", no_args_is_help=True)
app.add_typer(strimzi_app)

Bootstrap = Annotated[
    str | None,
    typer.Option(help="host:port; default COCOON_KAFKA_BOOTSTRAP or the local developer broker."),
]
Prefix = Annotated[
    str | None,
    typer.Option(help="Prepended to every topic name (default COCOON_TOPIC_PREFIX, else none)."),
]
CatalogDir = Annotated[
    Path | None, typer.Option(help="Catalog directory (default schemas/topics/).")
]


def _print_changes(changes: list[TopicChange], title: str) -> None:
    table = Table(title=title)
    for column in ("topic", "action", "detail"):
        table.add_column(column)
    styles = {"created": "green", "altered": "yellow", "partitions": "yellow", "kept": "red"}
    for change in changes:
        style = styles.get(change.action, "dim")
        table.add_row(change.topic, f"[{style}]{change.action}[/]", change.detail)
    Console().print(table)
    changed = sum(c.changed for c in changes)
    topics = len({c.topic for c in changes})
    Console().print(f"{changed} change(s) over {topics} topic(s)")


@app.command("apply")
def apply(
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    catalog: CatalogDir = None,
    replication_factor: Annotated[
        int | None, typer.Option(help="Default: min(3, brokers).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change, change nothing.")
    ] = False,
    acls: Annotated[
        bool, typer.Option(help="Also apply each principal's ACLs (cocoon.core.acls).")
    ] = True,
    users_dir: Annotated[
        Path | None,
        typer.Option(
            help="Create the principals' SCRAM users with the passwords kept here (made on "
            "first use). Default: the local broker's, when it is the target; else no users."
        ),
    ] = None,
) -> None:
    """Create missing topics (and their DLQs), fix configs, add partitions; apply the ACLs and
    (dev) the users. Idempotent."""
    specs = catalog_topics(load_catalog(catalog))
    prefix = topic_prefix() if prefix is None else prefix
    target = bootstrap or default_bootstrap()
    changes = apply_topics(
        target,
        specs,
        prefix=prefix,
        replication_factor=replication_factor,
        dry_run=dry_run,
    )
    _print_changes(changes, "topics apply" + (" (dry run)" if dry_run else ""))
    if acls and not dry_run:
        if users_dir is None and not bootstrap and not os.environ.get("COCOON_KAFKA_BOOTSTRAP"):
            users_dir = default_layout().secrets.users_dir
        try:
            files = provision(target, prefix=prefix, users_dir=users_dir)
            removed = prune(target, prefix=prefix)
        except SecurityDisabledError:
            Console().print("the broker has no authorizer: ACLs not applied")
            return
        for binding in removed:
            pattern = binding.resource_pattern
            Console().print(
                f"removed stale ACL: {binding.principal} {binding.operation.name} on "
                f"{pattern.resource_type.name.lower()} {pattern.resource_name} "
                f"({pattern.pattern_type.name.lower()})"
            )
        Console().print(
            f"ACLs applied for {len(principal_acls(prefix=prefix))} principals"
            + (f", {len(removed)} stale removed" if removed else "")
            + (f"; their passwords are in {users_dir}" if files else "")
        )


@app.command("instance")
def instance(
    template: Annotated[str, typer.Argument(help="Template topic, e.g. 'work.{worker_id}'.")],
    params: Annotated[list[str], typer.Argument(help="name=value, e.g. worker_id=w-123.")],
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    catalog: CatalogDir = None,
) -> None:
    """Create one instance of a template topic and its DLQ (normally the scheduler does this)."""
    specs = load_catalog(catalog)
    if template not in specs or not specs[template].template:
        raise typer.BadParameter(f"{template!r} is not a template topic of the catalog")
    values = dict(p.split("=", 1) for p in params)
    changes = apply_topics(
        bootstrap or default_bootstrap(),
        instance_topics(specs[template], **values),
        prefix=topic_prefix() if prefix is None else prefix,
    )
    _print_changes(changes, f"instance of {template}")


@app.command("codegen")
def codegen(
    src: Annotated[
        Path | None, typer.Option(help="cocoon-core's src/ directory (default: this install's).")
    ] = None,
    schemas: Annotated[
        Path | None, typer.Option(help="Schemas directory (default: the shipped schemas/).")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if a file is out of date.")
    ] = False,
) -> None:
    """Generate the Python models (and contract constants) from schemas/."""
    src = src or source_root()
    files = render_all(schemas)
    stale = stale_files(src, files)
    if check:
        for path in stale:
            typer.echo(f"out of date: {path}", err=True)
        raise typer.Exit(1 if stale else 0)
    for relative, text in files.items():
        path = src / relative
        path.write_text(text)
        typer.echo(f"{'wrote' if path in stale else 'unchanged'} {path}")


@app.command("list")
def list_(
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    catalog: CatalogDir = None,
    broker: Annotated[bool, typer.Option(help="Also show what exists on the broker.")] = True,
) -> None:
    """The catalog's topics, and whether each exists on the broker."""
    prefix = topic_prefix() if prefix is None else prefix
    specs = load_catalog(catalog)
    present = list_topics(bootstrap or default_bootstrap(), prefix) if broker else {}
    table = Table(title="topic catalog")
    for column in ("topic", "record", "key", "partitions", "config", "on broker"):
        table.add_column(column)
    for spec in sorted(specs.values(), key=lambda s: s.name):
        name = prefix + spec.name
        config = ", ".join(f"{k}={v}" for k, v in topic_config(spec).items())
        if spec.template:
            where = "template"
        elif not broker:
            where = "?"
        else:
            where = f"{present[name]} partitions" if name in present else "[red]missing[/]"
        versions = ",".join(f"v{v}" for v in spec.versions)
        table.add_row(
            name, f"{spec.record} {versions}", spec.key or "-", str(spec.partitions), config, where
        )
    Console(width=200).print(table)
