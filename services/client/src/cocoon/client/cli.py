"""`cocoon-client` (and `cocoon client` where the cocoon CLI is installed).

serve    --gateway URL --api-key KEY [--port 8181] [--config FILE]   the local proxy
verify   --gateway URL --model M [--json] [--config FILE]            whom it would trust
receipts [--json]                                                    the kept receipts
audit    --gateway URL --api-key KEY [--since MS] [--json] [--config FILE]
         every kept receipt verified again and held against the account's charges
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from cocoon.client.audit import Auditor
from cocoon.client.config import ClientConfig, load_config
from cocoon.client.errors import ClientError
from cocoon.client.receipts import ReceiptStore
from cocoon.client.server import ProxyServer
from cocoon.client.session import SealedSession
from cocoon.client.transport import SealingTransport


def _say_roots(config: ClientConfig) -> None:
    for root in config.development_roots:
        print(
            f"WARNING: this client trusts a development root ({root.name}, from {config.source}): "
            "quotes from simulated TDX are accepted. Never use this configuration in production.",
            file=sys.stderr,
        )


async def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config, gateway=args.gateway)
    _say_roots(config)
    session = SealedSession(args.gateway, args.api_key, config, receipts=ReceiptStore())
    server = ProxyServer(SealingTransport(session), args.host, args.port)
    await server.start()
    print(
        f"Cocoon client proxy on http://{server.host}:{server.port}/v1 -> {args.gateway} "
        "(requests are sealed here, to workers this client verified)",
        flush=True,
    )
    try:
        await server.serve_forever()
    finally:
        await session.aclose()
    return 0


async def _verify(args: argparse.Namespace) -> int:
    config = load_config(args.config, gateway=args.gateway)
    if not args.json:
        _say_roots(config)
    session = SealedSession(args.gateway, args.api_key or "", config)
    try:
        checks = await session.verify_workers(args.model)
    finally:
        await session.aclose()
    pinned = config.registry_public_key.hex()
    hint = session.api.registry_key_hint
    if args.json:
        doc = {
            "model": args.model,
            "registry_public_key": {"pinned": pinned, "gateway_says": hint},
            "workers": [c.to_dict() for c in checks],
        }
        print(json.dumps(doc, indent=2))
    else:
        if hint is not None and hint != pinned:
            print(
                f"WARNING: the gateway says its registry is signed by {hint}; this client pins "
                f"{pinned} (from {config.source}), so none of its entries count here",
                file=sys.stderr,
            )
        print(f"{'worker':<20} {'trusted':<8} {'tcb':<10} {'root':<24} {'image hash':<18} reason")
        for c in checks:
            print(
                f"{c.worker_id:<20} {'yes' if c.accepted else 'NO':<8} {c.tcb_status or '-':<10} "
                f"{(c.root or '-') + (' (dev)' if c.development_root else ''):<24} "
                f"{(c.image_hash or '-')[:16]:<18} {c.reason}"
            )
        if not checks:
            print(f"the gateway offers no worker for {args.model!r}")
    return 0 if any(c.accepted for c in checks) else 1


def _receipts(args: argparse.Namespace) -> int:
    rows = ReceiptStore().all()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'request':<38} {'worker':<14} {'att':>3} {'prompt':>6} {'compl':>6} done")
    for r in rows:
        print(
            f"{r['request_id']:<38} {r['worker_id']:<14} {r['attempt']:>3} "
            f"{r['prompt_tokens']:>6} {r['completion_tokens']:>6} {r['completed']}"
        )
    return 0


async def _audit(args: argparse.Namespace) -> int:
    config = load_config(args.config, gateway=args.gateway)
    store = ReceiptStore()
    receipts = store.all()
    # By default the statement starts with the first request this client kept a receipt for:
    # charges before it are from before this client's time.
    since = args.since
    if since is None:
        since = min((int(r["started_at"]) for r in receipts), default=0)
    session = SealedSession(args.gateway, args.api_key, config)
    try:
        charges = await session.api.statement(since)
    finally:
        await session.aclose()
    report = Auditor(config, store.evidence).audit(receipts, charges)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"{'request':<38} {'worker':<14} {'att':>3} {'tokens':>7} {'charged':>12} verified")
        for row in report.rows:
            charged = "-" if row.charged_nanoton is None else f"{row.charged_nanoton:,}"
            root = " (development root)" if row.development_root and row.verified == "yes" else ""
            print(
                f"{row.request_id:<38} {row.worker_id:<14} {row.attempt:>3} "
                f"{row.prompt_tokens + row.completion_tokens:>7} {charged:>12} "
                f"{row.verified}{root}"
            )
        print(f"{len(report.rows)} receipts, {report.charges} charges since {since}")
        for finding in report.findings:
            print(f"FINDING {finding.kind} {finding.request_id}: {finding.detail}")
        if not report.findings:
            print("no findings: every charge has a verified receipt, none is charged twice")
    return 1 if report.findings else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cocoon-client", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the local OpenAI-compatible proxy that seals itself")
    serve.add_argument("--gateway", required=True)
    serve.add_argument("--api-key", default=os.environ.get("COCOON_API_KEY"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8181)
    serve.add_argument("--config", default=None)
    verify = sub.add_parser("verify", help="which workers this client would trust, and why")
    verify.add_argument("--gateway", required=True)
    verify.add_argument("--model", required=True)
    verify.add_argument("--api-key", default=os.environ.get("COCOON_API_KEY"))
    verify.add_argument("--json", action="store_true")
    verify.add_argument("--config", default=None)
    receipts = sub.add_parser("receipts", help="the worker-signed usage receipts kept here")
    receipts.add_argument("--json", action="store_true")
    audit = sub.add_parser("audit", help="verify the kept receipts and compare them with charges")
    audit.add_argument("--gateway", required=True)
    audit.add_argument("--api-key", default=os.environ.get("COCOON_API_KEY"))
    audit.add_argument("--since", type=int, default=None, help="unix ms (default: first receipt)")
    audit.add_argument("--json", action="store_true")
    audit.add_argument("--config", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "serve":
            if not args.api_key:
                print("error: --api-key (or COCOON_API_KEY) is required", file=sys.stderr)
                return 2
            with _quiet_interrupt():
                return asyncio.run(_serve(args))
            return 0
        if args.command == "verify":
            return asyncio.run(_verify(args))
        if args.command == "audit":
            if not args.api_key:
                print("error: --api-key (or COCOON_API_KEY) is required", file=sys.stderr)
                return 2
            return asyncio.run(_audit(args))
        return _receipts(args)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


class _quiet_interrupt:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *_: Any) -> bool:
        return kind is KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
