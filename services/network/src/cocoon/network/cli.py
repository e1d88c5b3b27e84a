"""`cocoon up`, `cocoon chat` and `cocoon status`: the local network from a terminal."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Annotated

import httpx
import typer
from rich.console import Console

from cocoon.network.chat import ChatError, stream_chat
from cocoon.network.demo import load_demo
from cocoon.network.engine_process import SMOLLM2_MODEL
from cocoon.network.minilm import MINILM_MODEL

console = Console()


def up(
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="chat worker nodes")] = 1,
    embedding_workers: Annotated[
        int, typer.Option(min=0, help="embedding worker nodes (all-MiniLM-L6-v2)")
    ] = 1,
    port: Annotated[int, typer.Option(help="gateway HTTP port")] = 8080,
    grpc_port: Annotated[int, typer.Option(help="gateway gRPC inference port")] = 50051,
    telegram_token: Annotated[
        str,
        typer.Option(
            help="a BotFather token: also run the Telegram bot (docs/telegram.md)",
            envvar="COCOON_TELEGRAM_TOKEN",
        ),
    ] = "",
) -> None:
    """Run the whole network on this machine: Kafka, the five services, N chat workers and
    the embedding workers."""
    from cocoon.network.local import LocalNetwork, NetworkError

    network = LocalNetwork(
        workers=workers,
        embedding_workers=embedding_workers,
        http_port=port,
        grpc_port=grpc_port,
        echo=lambda msg: console.print(f"[cyan]{msg}"),
        telegram_token=telegram_token,
    )
    stop_on_signals()
    try:
        with console.status("Starting the Cocoon network ..."):
            network.start()
        _banner(network.gateway_url, network.api_key, network.grpc_target)
        network.watch()
    except NetworkError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        pass
    finally:
        console.print("Stopping ...")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the stop short
        network.stop()
        console.print("Stopped.")


def stop_on_signals() -> None:
    """Make SIGTERM and SIGHUP (a closed terminal) stop the network as Ctrl-C does, and Ctrl-C
    work even when the shell started us with SIGINT ignored (as it does for background jobs):
    otherwise the broker, the services and the engines would outlive `cocoon up`."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def _banner(url: str, key: str, grpc_target: str) -> None:
    # soft_wrap: commands must stay copy-pasteable, never folded at the terminal width.
    text = f"""
[bold green]Cocoon is up.[/bold green]  API: [bold]{url}/v1[/bold]   demo key: [bold]{key}[/bold]

  .venv/bin/cocoon chat "Write a haiku about Kafka"

  curl -N {url}/v1/chat/completions -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "{SMOLLM2_MODEL}", "stream": true,
         "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  python -c 'from openai import OpenAI
c = OpenAI(base_url="{url}/v1", api_key="{key}")
for e in c.chat.completions.create(model="{SMOLLM2_MODEL}", stream=True,
        messages=[{{"role": "user", "content": "Hello!"}}]):
    print(e.choices[0].delta.content or "" if e.choices else "", end="", flush=True)'

The same over gRPC (cocoon.inference.v1.Inference, docs/api.md): {grpc_target}

Models: {SMOLLM2_MODEL} (chat, tools), {MINILM_MODEL} (embeddings, 384 dimensions);
context lengths, capabilities and prices per token:

  curl {url}/v1/models -H "Authorization: Bearer {key}"

  curl {url}/v1/embeddings -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "{MINILM_MODEL}", "input": ["Kafka is a log", "Sealed prompts"]}}'

Sealed on your side instead, so no operator component can read the prompt (another terminal):

  .venv/bin/cocoon client serve --gateway {url} --api-key {key}
  # then point any OpenAI SDK at http://127.0.0.1:8181/v1

Ctrl-C stops everything."""
    console.print(text, soft_wrap=True)


def chat(
    prompt: Annotated[str, typer.Argument(help="what to ask")],
    model: Annotated[str, typer.Option(help="model id")] = SMOLLM2_MODEL,
    max_tokens: Annotated[int, typer.Option(min=1)] = 256,
    timeout: Annotated[float, typer.Option(help="seconds")] = 120.0,
) -> None:
    """Stream an answer from the local gateway (started by `cocoon up`)."""
    demo = load_demo()
    if not demo:
        console.print("[red]error:[/red] no local network found; run `cocoon up` first")
        raise typer.Exit(1)
    try:
        usage = stream_chat(
            demo["gateway_url"],
            demo["api_key"],
            prompt,
            model=model,
            max_tokens=max_tokens,
            timeout=timeout,
        )
    except ChatError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    except httpx.HTTPError as exc:
        console.print(f"[red]error:[/red] gateway unreachable ({exc}); is `cocoon up` running?")
        raise typer.Exit(1) from exc
    if usage:
        console.print(
            f"[dim]{usage.get('prompt_tokens')} prompt + {usage.get('completion_tokens')} "
            "completion tokens[/dim]"
        )


def status() -> None:
    """Workers (verdict, model, load) and account balances, read from the bus."""
    import asyncio

    from rich.table import Table

    from cocoon.core.bus.admin import default_bootstrap
    from cocoon.network.snapshot import take_snapshot

    snapshot = asyncio.run(take_snapshot(default_bootstrap()))
    workers = Table("worker", "verdict", "expires", "models", "state", "load")
    for row in snapshot.workers:
        workers.add_row(*row)
    console.print(workers)
    balances = Table("account", "balance (nanoTON)", "held: requests + admission grants")
    for row in snapshot.balances:
        balances.add_row(*row)
    console.print(balances)
