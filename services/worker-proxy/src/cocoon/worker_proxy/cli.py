"""`cocoon worker init | run | status | audit`: a GPU owner's worker (docs/gpu-owners.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import typer

from cocoon.core.codec.timestamps import now_millis
from cocoon.core.runtime.service import EXIT_CONFIG, run_service
from cocoon.core.runtime.settings import CONFIG_FILE_ENV, SettingsError, load_settings
from cocoon.worker_proxy.audit import audit
from cocoon.worker_proxy.chain import ChainError, received_at
from cocoon.worker_proxy.config import (
    WorkerConfig,
    WorkerConfigError,
    default_config_path,
    receipts_path_beside,
)
from cocoon.worker_proxy.receipts_log import read_receipts
from cocoon.worker_proxy.service import Settings, build
from cocoon.worker_proxy.worker_view import WorkerView, read_worker_view

# Engines a development worker can start for itself (`--local-engine`); cocoon-network
# registers the CPU engine here, so the worker-proxy need not depend on it.
ENGINE_ENTRY_POINT_GROUP = "cocoon.worker_engine"

app = typer.Typer(
    help="Run a worker as a GPU owner: init, run, status, audit.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="worker configuration file (default: the project cache)"),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"cocoon worker: {message}", err=True)
    return typer.Exit(EXIT_CONFIG)


@app.command()
def init(
    payout_address: Annotated[
        str, typer.Option(help="your TON wallet address, raw (0:<hex>) or user-friendly")
    ],
    worker_id: Annotated[str, typer.Option(help="this worker's id (names its work topic)")],
    model: Annotated[str, typer.Option(help="the model id served, as the registry lists it")],
    engine_url: Annotated[
        str, typer.Option(help="the engine's OpenAI base URL")
    ] = "http://127.0.0.1:8080/v1",
    coefficient: Annotated[int, typer.Option(help="price coefficient asked, 1000 = 1.0x")] = 1000,
    capacity: Annotated[
        int | None,
        typer.Option(
            help="requests the engine runs at once (default: asked from the engine at start, "
            "llama.cpp's /props; 1 if it does not say)"
        ),
    ] = None,
    bootstrap: Annotated[
        str, typer.Option(help="the network's Kafka bootstrap", envvar="COCOON_KAFKA_BOOTSTRAP")
    ] = "127.0.0.1:9092",
    config: ConfigOption = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing configuration")] = False,
) -> None:
    """Write the worker configuration: payout address, model, engine, price, capacity."""
    path = config or default_config_path()
    if path.exists() and not force:
        raise _fail(f"{path} exists; pass --force to overwrite it")
    worker = WorkerConfig(
        worker_id=worker_id,
        payout_address=payout_address,
        model=model,
        engine_url=engine_url,
        coefficient=coefficient,
        max_active_requests=capacity,
        kafka_bootstrap=bootstrap,
        receipts_file=str(receipts_path_beside(path, worker_id)),
    )
    try:
        warnings = worker.check()
    except WorkerConfigError as exc:
        raise _fail(str(exc)) from None
    worker.write(path)
    for warning in warnings:
        typer.echo(f"note: {warning}", err=True)
    typer.echo(f"wrote {path}")


@app.command()
def run(
    config: ConfigOption = None,
    local_engine: Annotated[
        bool, typer.Option(help="also start the local CPU engine (development)")
    ] = False,
) -> None:
    """Start the worker-proxy with the configuration (and, for development, a local engine)."""
    settings = _settings(config, for_this_process=True)
    with _engine(local_engine, settings.model) as engine_url:
        if engine_url is not None:
            settings = settings.model_copy(update={"engine_url": engine_url})
        code = run_service(lambda: build(settings), settings)
    raise typer.Exit(code)


TonApiKeyOption = Annotated[
    str | None, typer.Option(help="TON API key", envvar="COCOON_TON_API_KEY")
]


@app.command()
def status(
    config: ConfigOption = None,
    ton_api_url: Annotated[
        str | None,
        typer.Option(
            help="also show the payouts confirmed on chain (toncenter v2 API base URL)",
            envvar="COCOON_TON_API_URL",
        ),
    ] = None,
    ton_api_key: TonApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """The worker as the network sees it: verdict, heartbeats, load, work done, earnings."""
    settings = _settings(config)
    kept = settings.receipts_file
    receipts = list(read_receipts(kept)) if kept is not None and kept.is_file() else []
    try:
        view = asyncio.run(read_worker_view(settings.kafka_bootstrap, settings.worker_id, receipts))
    except (OSError, RuntimeError, TimeoutError) as exc:
        raise _fail(f"cannot read the network at {settings.kafka_bootstrap}: {exc}") from None
    on_chain = None
    if ton_api_url:
        addresses = _payout_addresses(settings, view)
        try:
            on_chain = asyncio.run(received_at(ton_api_url, addresses, api_key=ton_api_key))
        except ChainError as exc:
            raise _fail(str(exc)) from None
    summary = view.summary(on_chain=on_chain)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        shown = "-" if value is None or value == [] else value
        if isinstance(value, list):
            shown = ", ".join(value) or "-"
        elif isinstance(value, int) and key.endswith("_nanoton"):
            shown = f"{value:,} nanoTON"
        typer.echo(f"{key.replace('_', ' '):<{width}}  {shown}")


@app.command("audit")
def audit_command(
    ton_api_url: Annotated[
        str, typer.Option(help="toncenter v2 compatible API base URL", envvar="COCOON_TON_API_URL")
    ],
    config: ConfigOption = None,
    ton_api_key: TonApiKeyOption = None,
    threshold: Annotated[
        int,
        typer.Option(
            help="the network's payout threshold, nanoTON", envvar="COCOON_TON_PAYOUT_THRESHOLD"
        ),
    ] = 10 * 10**9,
    delay: Annotated[
        float, typer.Option(help="seconds a credit or payout may take to reach the chain")
    ] = 3600.0,
    grace: Annotated[float, typer.Option(help="seconds billing may take to credit")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Compare the receipts this worker signed with billing's credits and the chain's payouts.
    Exits 1 when something is missing."""
    settings = _settings(config)
    if settings.receipts_file is None or not settings.receipts_file.is_file():
        raise _fail(f"no receipts file ({settings.receipts_file}); has the worker run?")
    if not settings.payout_address:
        raise _fail("the configuration has no payout address")
    try:
        receipts = list(read_receipts(settings.receipts_file))
        view = asyncio.run(read_worker_view(settings.kafka_bootstrap, settings.worker_id))
        # Every address the receipts were earned under, not only the configured one: earnings
        # made before an address change are paid to the old address.
        addresses = _payout_addresses(settings, view, receipts)
        received = asyncio.run(received_at(ton_api_url, addresses, api_key=ton_api_key))
    except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
        raise _fail(str(exc)) from None
    findings = audit(
        receipts,
        view,
        received,
        now_ms=now_millis(),
        threshold_nanoton=threshold,
        delay_ms=int(delay * 1000),
        grace_ms=int(grace * 1000),
    )
    if as_json:
        typer.echo(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        typer.echo(
            f"{len(receipts)} receipts kept, {len(view.credits)} credited, "
            f"{sum(p.amount_nanoton for p in received):,} nanoTON received in "
            f"{len(received)} payouts"
        )
        for finding in findings:
            typer.echo(f"{finding.kind}: {finding.detail}")
        typer.echo("nothing missing" if not findings else f"{len(findings)} problem(s)")
    raise typer.Exit(1 if findings else 0)


def _payout_addresses(
    settings: Settings, view: WorkerView, receipts: list[dict[str, Any]] | None = None
) -> list[str]:
    """The addresses this worker may have been paid at: those its verdicts attested, those its
    kept receipts were earned under, and the configured one."""
    if receipts is None and settings.receipts_file is not None and settings.receipts_file.is_file():
        receipts = list(read_receipts(settings.receipts_file))
    kept = [r["payout_address"] for r in receipts or [] if r.get("payout_address")]
    configured = [settings.payout_address] if settings.payout_address else []
    return list(dict.fromkeys([*view.attested_addresses, *kept, *configured]))


def _settings(config: Path | None, *, for_this_process: bool = False) -> Settings:
    """The worker's settings from its configuration file (and COCOON_* overrides).

    `for_this_process` (`worker run`: this process is the worker) leaves the file as the
    process's settings file, as `cocoon run worker-proxy --config` does; `status` and `audit`
    only read it, and leave the environment as it was (the CLI may run inside another program).
    """
    path = config or default_config_path()
    if not path.is_file():
        raise _fail(f"{path}: no worker configuration; run `cocoon worker init` first")
    saved = os.environ.get(CONFIG_FILE_ENV)
    os.environ[CONFIG_FILE_ENV] = str(path)
    try:
        return load_settings(Settings, service_name="worker-proxy")
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    finally:
        if not for_this_process:
            if saved is None:
                os.environ.pop(CONFIG_FILE_ENV, None)
            else:
                os.environ[CONFIG_FILE_ENV] = saved


@contextlib.contextmanager
def _engine(local: bool, model: str) -> Iterator[str | None]:
    """The local engine's base URL while it runs, or None to use the configured engine."""
    if not local:
        yield None
        return
    found = {entry.name: entry for entry in entry_points(group=ENGINE_ENTRY_POINT_GROUP)}
    if "local" not in found:
        raise _fail("--local-engine needs cocoon-network installed (the CPU engine)")
    typer.echo("starting the local CPU engine ...", err=True)
    with contextlib.ExitStack() as stack:
        try:
            engine = stack.enter_context(found["local"].load()(model=model))
        except RuntimeError as exc:  # the launcher's EngineError: not installed, did not start
            raise _fail(f"the local engine did not start: {exc}") from None
        yield engine.base_url
