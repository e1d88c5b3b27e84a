"""`cocoon attest`: parse, verify and simulate TDX quotes (see docs/attestation.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from aiokafka.errors import KafkaError
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cocoon.attestation.claims import Claims, ClaimsError, Freshness
from cocoon.attestation.collateral import BundleSource, CollateralError, PcsSource, save_bundle
from cocoon.attestation.freshness import NonceBook
from cocoon.attestation.policy import MeasurementSet, Policy, PolicyError
from cocoon.attestation.quote import QuoteFormatError, decode_quote_input, parse_quote
from cocoon.attestation.registry import Registry, RegistryError
from cocoon.attestation.registry_mirror import MirrorError
from cocoon.attestation.registry_topic import publish_registry, read_registry
from cocoon.attestation.simtdx import SimTdx
from cocoon.attestation.verify import Verifier
from cocoon.core.bus.admin import default_bootstrap

QUOTE_SCHEMA = "cocoon.attestation.quote/1"

attest_app = typer.Typer(help="Parse, verify and simulate Intel TDX quotes.", no_args_is_help=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _read_quote(path: Path) -> bytes:
    try:
        return decode_quote_input(path.read_bytes())
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc}") from None
    except QuoteFormatError as exc:
        raise _fail(f"malformed quote: {exc}", 1) from None


@attest_app.command("parse")
def parse_cmd(
    quote: Annotated[Path, typer.Argument(help="Quote file: raw bytes or hex text.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print every header and body field, the FMSPC and the image hash."""
    try:
        q = parse_quote(_read_quote(quote))
    except QuoteFormatError as exc:
        raise _fail(f"malformed quote: {exc}", 1) from None
    d = {"schema": QUOTE_SCHEMA, **q.to_dict()}
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    typer.echo(
        f"quote            v{q.version}, TD report {q.td_report_version}, {len(q.raw)} bytes"
    )
    for section in ("header", "body", "pck", "qe_report"):
        typer.echo(f"[{section}]")
        for key, value in d[section].items():
            typer.echo(f"  {key:<30} {value}")
    typer.echo(f"image_hash       {d['image_hash']}")
    typer.echo(f"fmspc            {d['pck']['fmspc']}")


@attest_app.command("verify")
def verify_cmd(
    quote: Annotated[Path, typer.Argument(help="Quote file: raw bytes or hex text.")],
    collateral: Annotated[
        Path | None, typer.Option(help="Offline collateral JSON (one object or a bundle).")
    ] = None,
    pccs: Annotated[str | None, typer.Option(help="PCCS / Intel PCS base URL (API v4).")] = None,
    at: Annotated[int | None, typer.Option(help="Verify at this unix time (default: now).")] = None,
    policy: Annotated[
        Path | None, typer.Option(help="Policy JSON (default: production, empty allow-list).")
    ] = None,
    claims: Annotated[Path | None, typer.Option(help="Claims JSON the quote must bind.")] = None,
    nonce: Annotated[
        str | None, typer.Option(help="Hex nonce to treat as issued (nonce freshness).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable verdict.")] = False,
) -> None:
    """Verify a quote; exit 0 only when it is accepted (1 rejected, 2 bad usage)."""
    if (collateral is None) == (pccs is None):
        raise _fail("give exactly one of --collateral FILE or --pccs URL")
    when = int(time.time()) if at is None else at
    try:
        pol = Policy.from_file(policy) if policy else Policy.production()
        source = BundleSource.from_file(collateral) if collateral else PcsSource(str(pccs))
        claim_obj = Claims.from_dict(json.loads(claims.read_text())) if claims else None
    except (PolicyError, CollateralError, ClaimsError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    book = NonceBook()
    if nonce:
        book.add(bytes.fromhex(nonce), when)
    verdict = Verifier(pol, source, book).verify(_read_quote(quote), claim_obj, when)
    if as_json:
        typer.echo(json.dumps(verdict.to_dict(), indent=2))
    else:
        typer.echo(f"tcb_status   {verdict.tcb_status or '-'}")
        typer.echo(f"advisories   {', '.join(verdict.advisory_ids) or '-'}")
        typer.echo(f"image_hash   {verdict.image_hash or '-'}")
        typer.echo(f"root         {verdict.root or '-'}")
        typer.echo(f"policy       {verdict.policy}")
        typer.echo(f"verdict      {'ACCEPTED' if verdict.accepted else 'REJECTED'}")
        typer.echo(f"reason       {verdict.reason}")
    raise typer.Exit(0 if verdict.accepted else 1)


def _fresh_claims(model: str, nonce: str | None, timestamp: int | None) -> Claims:
    """Claims with freshly generated worker keys (development only; private keys discarded)."""
    sign = ed25519.Ed25519PrivateKey.generate().public_key()
    xk = x25519.X25519PrivateKey.generate().public_key()
    mk = mlkem.MLKEM768PrivateKey.generate().public_key()
    xk2 = x25519.X25519PrivateKey.generate().public_key()
    fresh = (
        Freshness(nonce=bytes.fromhex(nonce))
        if nonce
        else Freshness(timestamp=int(time.time()) if timestamp is None else timestamp)
    )
    return Claims(
        sign.public_bytes(Encoding.Raw, PublicFormat.Raw),
        xk.public_bytes(Encoding.Raw, PublicFormat.Raw),
        mk.public_bytes_raw() + xk2.public_bytes(Encoding.Raw, PublicFormat.Raw),
        model,
        fresh,
    )


@attest_app.command("simulate")
def simulate_cmd(
    out: Annotated[Path, typer.Option(help="Directory for quote, collateral, claims, policy.")],
    model: Annotated[str, typer.Option(help="Model name to put in generated claims.")] = "dev",
    claims: Annotated[
        Path | None, typer.Option(help="Claims JSON to bind (default: fresh keys).")
    ] = None,
    nonce: Annotated[str | None, typer.Option(help="Hex nonce for generated claims.")] = None,
    timestamp: Annotated[int | None, typer.Option(help="Timestamp for generated claims.")] = None,
    version: Annotated[int, typer.Option(help="Quote version, 4 or 5.")] = 4,
    sim_dir: Annotated[
        Path | None, typer.Option(help="Test CA directory (default: project cache).")
    ] = None,
) -> None:
    """Emit a simulated TDX quote with matching collateral and a development policy."""
    try:
        claim_obj = (
            Claims.from_dict(json.loads(claims.read_text()))
            if claims
            else _fresh_claims(model, nonce, timestamp)
        )
    except (ClaimsError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    sim = SimTdx.load_or_create(sim_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quote.bin").write_bytes(sim.quote(claim_obj.report_data(), version=version))
    save_bundle(out / "collateral.json", [sim.collateral()])
    (out / "claims.json").write_text(json.dumps(claim_obj.to_dict(), indent=2) + "\n")
    (out / "policy.json").write_text(json.dumps(sim.development_policy().to_dict(), indent=2))
    typer.echo(f"wrote {out}/quote.bin, collateral.json, claims.json, policy.json")
    typer.echo(
        f"verify: cocoon attest verify {out}/quote.bin --collateral {out}/collateral.json "
        f"--policy {out}/policy.json --claims {out}/claims.json"
        + (f" --nonce {nonce}" if nonce else "")
    )


# ---- `cocoon registry`: the compacted registry topic, or a local file with --file ------------

registry_app = typer.Typer(
    help="Edit the attestation registry (allowed images, measurements, models, TCB statuses). "
    "Writes to the attestation.registry topic; --file edits a local JSON file instead.",
    no_args_is_help=True,
)
RegistryFile = Annotated[
    Path | None, typer.Option("--file", help="Edit this registry JSON file, not the topic.")
]
Bootstrap = Annotated[
    str | None,
    typer.Option(help="Kafka bootstrap (default: COCOON_KAFKA_BOOTSTRAP or the local broker)."),
]
Prefix = Annotated[str | None, typer.Option(help="Topic prefix (default: COCOON_TOPIC_PREFIX).")]


def _kafka(bootstrap: str | None) -> str:
    return bootstrap or default_bootstrap()


def _load_registry(file: Path | None, bootstrap: str | None, prefix: str | None) -> Registry:
    try:
        if file is not None:
            return Registry.load(file)
        return asyncio.run(read_registry(_kafka(bootstrap), prefix=prefix)).registry
    except (RegistryError, MirrorError, KafkaError) as exc:
        raise _fail(str(exc)) from None


def _edit(
    file: Path | None,
    bootstrap: str | None,
    prefix: str | None,
    change: Callable[[Registry], object],
) -> None:
    try:
        if file is not None:
            reg = Registry.load(file)
            change(reg)
            reg.save(file)
            typer.echo(f"updated {file}")
            return
        state, entries = asyncio.run(publish_registry(_kafka(bootstrap), change, prefix=prefix))
    except (RegistryError, PolicyError, MirrorError, KafkaError) as exc:
        raise _fail(str(exc)) from None
    for e in entries:
        typer.echo(f"{'allow ' if e.allowed else 'remove'} {e.entry_id}")
    typer.echo(f"registry version {state.version} ({len(entries)} change(s))")


@registry_app.command("show")
def registry_show(
    file: RegistryFile = None, bootstrap: Bootstrap = None, prefix: Prefix = None
) -> None:
    """Print the registry as JSON."""
    typer.echo(json.dumps(_load_registry(file, bootstrap, prefix).to_dict(), indent=2))


@registry_app.command("add-image")
def registry_add_image(
    image_hash: str, file: RegistryFile = None, bootstrap: Bootstrap = None, prefix: Prefix = None
) -> None:
    """Allow an image hash."""
    _edit(file, bootstrap, prefix, lambda r: r.add_image(image_hash))


@registry_app.command("remove-image")
def registry_remove_image(
    image_hash: str, file: RegistryFile = None, bootstrap: Bootstrap = None, prefix: Prefix = None
) -> None:
    """Stop allowing an image hash (revokes the verdicts that rely on it)."""
    _edit(file, bootstrap, prefix, lambda r: r.remove_image(image_hash))


def _measurement_set(mrtd: str, rtmr0: str, rtmr1: str, rtmr2: str, rtmr3: str) -> MeasurementSet:
    d = {"mrtd": mrtd, "rtmr0": rtmr0, "rtmr1": rtmr1, "rtmr2": rtmr2, "rtmr3": rtmr3}
    try:
        return MeasurementSet.from_dict(d)
    except PolicyError as exc:
        raise _fail(str(exc)) from None


@registry_app.command("add-measurements")
def registry_add_measurements(
    mrtd: str,
    rtmr0: str,
    rtmr1: str,
    rtmr2: str,
    rtmr3: str,
    file: RegistryFile = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Allow an MRTD + RTMR0..3 set."""
    m = _measurement_set(mrtd, rtmr0, rtmr1, rtmr2, rtmr3)
    _edit(file, bootstrap, prefix, lambda r: r.add_measurements(m))


@registry_app.command("remove-measurements")
def registry_remove_measurements(
    mrtd: str,
    rtmr0: str,
    rtmr1: str,
    rtmr2: str,
    rtmr3: str,
    file: RegistryFile = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Stop allowing an MRTD + RTMR0..3 set."""
    m = _measurement_set(mrtd, rtmr0, rtmr1, rtmr2, rtmr3)
    _edit(file, bootstrap, prefix, lambda r: r.remove_measurements(m))


@registry_app.command("add-model")
def registry_add_model(
    name: str,
    model_hash: str,
    file: RegistryFile = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Allow a model (name and SHA-256 of its identity)."""
    _edit(file, bootstrap, prefix, lambda r: r.add_model(name, model_hash))


@registry_app.command("remove-model")
def registry_remove_model(
    name: str, file: RegistryFile = None, bootstrap: Bootstrap = None, prefix: Prefix = None
) -> None:
    """Stop allowing a model (revokes the verdicts of workers serving it)."""
    _edit(file, bootstrap, prefix, lambda r: r.remove_model(name))


@registry_app.command("allow-tcb")
def registry_allow_tcb(
    status: str, file: RegistryFile = None, bootstrap: Bootstrap = None, prefix: Prefix = None
) -> None:
    """Accept a TCB status (UpToDate is accepted by default)."""
    _edit(file, bootstrap, prefix, lambda r: r.allow_tcb(status))


@registry_app.command("disallow-tcb")
def registry_disallow_tcb(
    status: str, file: RegistryFile = None, bootstrap: Bootstrap = None, prefix: Prefix = None
) -> None:
    """Stop accepting a TCB status."""
    _edit(file, bootstrap, prefix, lambda r: r.disallow_tcb(status))


@registry_app.command("require-gpu")
def registry_require_gpu(
    model: str, file: RegistryFile = None, bootstrap: Bootstrap = None, prefix: Prefix = None
) -> None:
    """Require a GPU in CC mode for a model (revokes its workers' verdicts without GPU
    evidence)."""
    _edit(file, bootstrap, prefix, lambda r: r.require_gpu(model))


@registry_app.command("no-require-gpu")
def registry_no_require_gpu(
    model: str, file: RegistryFile = None, bootstrap: Bootstrap = None, prefix: Prefix = None
) -> None:
    """Stop requiring a GPU in CC mode for a model (revokes nothing)."""
    _edit(file, bootstrap, prefix, lambda r: r.no_require_gpu(model))


@registry_app.command("set-prices")
def registry_set_prices(
    price_per_token: Annotated[int, typer.Option(help="client nanoTON per adjusted token")],
    worker_fee_per_token: Annotated[int, typer.Option(help="worker nanoTON per adjusted token")],
    prompt_bps: Annotated[int, typer.Option(help="prompt tokens multiplier")] = 10_000,
    cached_bps: Annotated[int, typer.Option(help="cached prompt tokens multiplier")] = 10_000,
    completion_bps: Annotated[int, typer.Option(help="completion tokens multiplier")] = 10_000,
    reasoning_bps: Annotated[int, typer.Option(help="reasoning tokens multiplier")] = 10_000,
    file: RegistryFile = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Set the network's price list (billing holds and charges new requests at it)."""
    values = {
        "price_per_token": price_per_token,
        "worker_fee_per_token": worker_fee_per_token,
        "prompt_bps": prompt_bps,
        "cached_bps": cached_bps,
        "completion_bps": completion_bps,
        "reasoning_bps": reasoning_bps,
    }
    _edit(file, bootstrap, prefix, lambda r: r.set_prices(values))


@registry_app.command("set-worker")
def registry_set_worker(
    worker_id: str,
    coefficient: Annotated[int, typer.Option(help="price coefficient, 1000 = 1.0x")] = 1000,
    payout_address: Annotated[str, typer.Option(help="TON address for its earnings")] = "",
    file: RegistryFile = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Set a worker's price coefficient and payout address."""
    _edit(
        file,
        bootstrap,
        prefix,
        lambda r: r.set_worker(worker_id, coefficient=coefficient, payout_address=payout_address),
    )


@registry_app.command("remove-worker")
def registry_remove_worker(
    worker_id: str, file: RegistryFile = None, bootstrap: Bootstrap = None, prefix: Prefix = None
) -> None:
    """Forget a worker's coefficient and payout address (earnings stay until an address is set)."""
    _edit(file, bootstrap, prefix, lambda r: r.remove_worker(worker_id))


@registry_app.command("ban-address")
def registry_ban_address(
    address: str, file: RegistryFile = None, bootstrap: Bootstrap = None, prefix: Prefix = None
) -> None:
    """Ban a TON payout address: workers attesting it are refused (current verdicts revoked)
    and billing pays nothing to it."""
    _edit(file, bootstrap, prefix, lambda r: r.ban_address(address))


@registry_app.command("unban-address")
def registry_unban_address(
    address: str, file: RegistryFile = None, bootstrap: Bootstrap = None, prefix: Prefix = None
) -> None:
    """Lift a payout address ban (revokes nothing)."""
    _edit(file, bootstrap, prefix, lambda r: r.unban_address(address))


@registry_app.command("export")
def registry_export(
    target: Path, file: RegistryFile = None, bootstrap: Bootstrap = None, prefix: Prefix = None
) -> None:
    """Write the registry to a file."""
    _load_registry(file, bootstrap, prefix).save(target)
    typer.echo(f"exported to {target}")


@registry_app.command("import")
def registry_import(
    source: Path, file: RegistryFile = None, bootstrap: Bootstrap = None, prefix: Prefix = None
) -> None:
    """Make the registry equal to a file: what the file lacks is removed (and revoked)."""
    try:
        new = Registry.from_dict(json.loads(source.read_text()))
    except (RegistryError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from None

    def replace_all(reg: Registry) -> None:
        for f in dataclasses.fields(Registry):
            setattr(reg, f.name, getattr(new, f.name))

    _edit(file, bootstrap, prefix, replace_all)
    typer.echo(f"imported {source}")
