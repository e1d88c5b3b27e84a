"""`cocoon billing`: balances, statements and the ledger, read from the `billing.ledger` topic.

Every command replays the committed ledger (read_committed, from the beginning) into the domain
ledger, so it shows exactly what the service would rebuild. The broker is `--bootstrap`, else
COCOON_KAFKA_BOOTSTRAP, else the local developer broker; the topic prefix is `--prefix`, else
COCOON_TOPIC_PREFIX.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

import typer

from cocoon.billing.ledger import Entry, Ledger, check_account
from cocoon.billing.money import NANO_PER_TON
from cocoon.billing.stream_replay import read_ledger
from cocoon.core.bus.admin import default_bootstrap
from cocoon.core.bus.settings import topic_prefix

app = typer.Typer(
    help="Billing: balances, statements and the ledger (from the billing.ledger topic).",
    no_args_is_help=True,
)

Bootstrap = Annotated[
    str | None, typer.Option("--bootstrap", help="host:port (default: COCOON_KAFKA_BOOTSTRAP)")
]
Prefix = Annotated[
    str | None, typer.Option("--prefix", help="topic prefix (default: COCOON_TOPIC_PREFIX)")
]
_DATES = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


def _entries(bootstrap: str | None, prefix: str | None) -> list[Entry]:
    server = bootstrap or default_bootstrap()
    chosen = topic_prefix() if prefix is None else prefix
    try:
        return asyncio.run(read_ledger(server, prefix=chosen, timeout_s=60, client_id="cli"))
    except (RuntimeError, TimeoutError, OSError) as exc:
        typer.echo(f"cannot read the ledger from {server}: {exc}", err=True)
        raise typer.Exit(2) from None


def _ton(nanoton: int) -> str:
    sign = "-" if nanoton < 0 else ""
    whole, frac = divmod(abs(nanoton), NANO_PER_TON)
    return f"{sign}{whole}.{frac:09d} TON"


def _time(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ms(value: datetime | None, default: int) -> int:
    if value is None:
        return default
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # dates on the command line are UTC
    return int(value.timestamp() * 1000)


def _client_accounts(account: str) -> tuple[str, str | None]:
    """(spendable account, held account or None) for a client id or a full account name."""
    if ":" in account or account == "unclaimed":
        return check_account(account), None
    return f"client:{account}", f"holds:{account}"


@app.command()
def balance(account: str, bootstrap: Bootstrap = None, prefix: Prefix = None) -> None:
    """An account's balance: a client id (available and held), `worker:<id>`, or a platform
    account (`network:commission`, `ton:deposits`, ...)."""
    try:
        spendable, held = _client_accounts(account)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    entries = _entries(bootstrap, prefix)
    ledger = Ledger.replay(entries)
    names = {spendable, held}
    known = f"open:{account}" in ledger or any(a in names for e in entries for a, _ in e.postings)
    if not known:
        typer.echo(f"unknown account {account!r}: no ledger entry names it", err=True)
        raise typer.Exit(1)
    available = ledger.balance(spendable)
    typer.echo(f"account    {account}")
    typer.echo(f"available  {available} nanoTON ({_ton(available)})")
    if held is not None:
        on_hold = ledger.balance(held)
        typer.echo(f"held       {on_hold} nanoTON ({_ton(on_hold)})")


@app.command()
def statement(
    account: str,
    from_: Annotated[
        datetime | None, typer.Option("--from", formats=_DATES, help="UTC, inclusive")
    ] = None,
    to: Annotated[
        datetime | None, typer.Option("--to", formats=_DATES, help="UTC, exclusive")
    ] = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """A client's requests in a period: model, tokens by category, price, worker, charge."""
    start, end = _ms(from_, 0), _ms(to, 2**63 - 1)
    rows = [
        e
        for e in _entries(bootstrap, prefix)
        if e.meta.get("client_id") == account
        and e.kind in ("charge", "release", "deposit", "claim")
        and start <= e.at_ms < end
    ]
    header = (
        f"{'time (UTC)':19}  {'kind':8}  {'request':36}  {'model':16}  {'prompt':>7}  "
        f"{'cached':>7}  {'compl':>7}  {'reason':>7}  {'coef':>5}  {'price/tok':>9}  "
        f"{'amount':>14}  worker"
    )
    typer.echo(header)
    charged = deposited = 0
    for e in rows:
        m = e.meta
        if e.kind == "charge":
            charged += m["charge"]
            typer.echo(
                f"{_time(e.at_ms):19}  {'charge':8}  {m['request_id']:36}  {m['model']:16}  "
                f"{m['prompt_tokens']:>7}  {m['cached_prompt_tokens']:>7}  "
                f"{m['completion_tokens']:>7}  {m['reasoning_tokens']:>7}  "
                f"{m['coefficient']:>5}  {m['price_per_token']:>9}  {-m['charge']:>14}  "
                f"{m['worker_id']}"
            )
        elif e.kind == "release":
            typer.echo(
                f"{_time(e.at_ms):19}  {'release':8}  {m['request_id']:36}  {'':16}  "
                f"{'':>7}  {'':>7}  {'':>7}  {'':>7}  {'':>5}  {'':>9}  {0:>14}  "
                f"({m.get('reason', '')})"
            )
        else:
            deposited += m["amount"]
            typer.echo(
                f"{_time(e.at_ms):19}  {e.kind:8}  {'':36}  {'':16}  {'':>7}  {'':>7}  {'':>7}  "
                f"{'':>7}  {'':>5}  {'':>9}  {m['amount']:>14}  {m.get('source') or ''}"
            )
    typer.echo(f"charged {charged} nanoTON ({_ton(charged)}); deposited {deposited} nanoTON")


@app.command()
def ledger(
    account: Annotated[
        str | None, typer.Option("--account", help="only entries touching this account")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="last N entries (0 = all)")] = 0,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Every ledger entry in order: sequence, time, id, kind and postings."""
    entries = list(enumerate(_entries(bootstrap, prefix)))
    if account is not None:
        names = {account, f"client:{account}", f"holds:{account}"}
        entries = [
            (seq, e)
            for seq, e in entries
            if any(a in names for a, _ in e.postings)
            or account in (e.meta.get("client_id"), e.meta.get("worker_id"))
        ]
    if limit:
        entries = entries[-limit:]
    for seq, e in entries:
        postings = " ".join(f"{a}{n:+d}" for a, n in e.postings) or "-"
        typer.echo(f"{seq:>7}  {_time(e.at_ms)}  {e.kind:16}  {e.entry_id}  {postings}")
    typer.echo(f"{len(entries)} entries")
