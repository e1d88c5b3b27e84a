"""`cocoon-client` (and `cocoon client` where the cocoon CLI is installed).

serve    --gateway URL --api-key KEY [--port 8181] [--config FILE]   the local proxy
verify   --gateway URL --model M [--json] [--config FILE]            whom it would trust
receipts [--json]                                                    the kept receipts
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

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
    if args.json:
        print(json.dumps({"model": args.model, "workers": [c.to_dict() for c in checks]}, indent=2))
    else:
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
