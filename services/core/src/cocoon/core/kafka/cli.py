"""`cocoon kafka start | stop | status`: the developer broker on loopback."""

from __future__ import annotations

import typer
from rich.console import Console

from cocoon.core.kafka import broker, pki

app = typer.Typer(help="Run a single-node Apache Kafka broker (KRaft) on 127.0.0.1.")
console = Console()


@app.command()
def start() -> None:
    """Start the broker (fetching it from Maven Central once) and wait until it answers."""
    layout = broker.default_layout()
    try:
        bootstrap = broker.start(layout, echo=lambda msg: console.print(f"[cyan]{msg}"))
    except broker.BrokerError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"Kafka {broker.KAFKA_VERSION} is up at [bold]{bootstrap}[/bold] (SASL_SSL, "
        f"SCRAM-SHA-512; CA {layout.secrets.ca_file}; admin password in "
        f"{layout.secrets.password_file(pki.ADMIN)})"
    )


@app.command()
def stop() -> None:
    """Stop the broker; leaves no process behind."""
    if broker.stop(broker.default_layout()):
        console.print("Kafka stopped")
    else:
        console.print("Kafka was not running")


@app.command()
def status() -> None:
    """Say whether the broker runs and answers metadata requests (exit 1 when it does not)."""
    layout = broker.default_layout()
    pid = broker.read_pid(layout)
    if pid is None:
        console.print("Kafka is not running")
        raise typer.Exit(1)
    answering = layout.secrets.complete and broker.broker_answers(
        layout.bootstrap, layout.admin_security()
    )
    state = "answering" if answering else "[red]not answering[/red]"
    console.print(f"Kafka pid {pid} at {layout.bootstrap}: {state}")
    if not answering:
        raise typer.Exit(1)
