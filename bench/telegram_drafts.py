"""Telegram bot: time from a user's message to the first draft, and draft updates per second.

    .venv/bin/python bench/telegram_drafts.py [--chats 1,8,32] [--ttft-ms 25] [--token-ms 15]

The bot (cocoon.telegram.bot, aiogram's real HTTP session, long polling) talks to the Bot API
stand-in of the tests (tests/support/telegram_api.py) and, in place of the gateway, to the paced
engine stand-in (bench/paced_engine.py: OpenAI-compatible, sleeps instead of computing), so the
figures are the bot's own: what it adds to the engine's time to first token, and how often a
chat's draft is updated (bounded by COCOON_TELEGRAM_DRAFT_INTERVAL_SECONDS, 0.3 s). Side by side
in one run: the engine's own TTFT, called directly. No Kafka: balances and top-ups are not used.
Ends with one JSON line per number of concurrent chats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from pathlib import Path

import httpx
import uvicorn
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from paced_engine import build as paced_engine  # noqa: E402
from support.telegram_api import FakeBotApi  # noqa: E402

from cocoon.telegram.balances import Balances  # noqa: E402
from cocoon.telegram.bot import CocoonBot  # noqa: E402
from cocoon.telegram.gateway import GatewayClient  # noqa: E402
from cocoon.telegram.settings import Settings  # noqa: E402

MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 128


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def engine_ttft(url: str, runs: int) -> list[float]:
    """The engine's own time to first content, called directly (the baseline)."""
    out = []
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(runs):
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": MAX_TOKENS, "stream": True}  # fmt: skip
            started = time.monotonic()
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if '"content"' in line:
                        out.append(time.monotonic() - started)
                        break
    return out


async def run(chats: list[int], ttft_ms: float, token_ms: float, rounds: int) -> None:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            paced_engine(MODEL, ttft_ms / 1000, token_ms / 1000),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.01)
    api = FakeBotApi()
    await api.start()
    settings = Settings(
        telegram_token=api.token,
        telegram_api_url=api.url,
        gateway_url=f"http://127.0.0.1:{port}",
        gateway_api_key="sk-bench",
        telegram_max_tokens=MAX_TOKENS,
        telegram_requests_per_minute=10_000,
    )
    gateway = GatewayClient(settings.gateway_url, settings.api_key())

    async def no_topups(_: object) -> None:
        raise AssertionError("the bench makes no payments")

    cocoon = CocoonBot(settings, gateway, Balances("tg-"), no_topups)
    bot = Bot(api.token, session=AiohttpSession(api=TelegramAPIServer.from_base(api.url)))
    dispatcher = Dispatcher()
    dispatcher.include_router(cocoon.router())
    polling = asyncio.create_task(
        dispatcher.start_polling(bot, handle_as_tasks=False, handle_signals=False)
    )
    baseline = await engine_ttft(f"http://127.0.0.1:{port}", 20)
    results = []
    user = 10_000
    for n in chats:
        first_ms: list[float] = []
        rates: list[float] = []
        for _ in range(rounds):
            users = list(range(user, user + n))
            user += n
            before = len(api.calls)
            pushed = time.monotonic()
            for u in users:
                api.say(u, "Tell me about Kafka")
            for u in users:
                await api.wait_for(
                    lambda c, u=u: c.method == "sendMessage" and int(c.params["chat_id"]) == u, 60
                )
            for u in users:
                drafts = [
                    c for c in api.calls[before:]
                    if c.method == "sendMessageDraft" and int(c.params["chat_id"]) == u
                ]  # fmt: skip
                first_ms.append((drafts[0].at - pushed) * 1000)
                if len(drafts) > 1:
                    rates.append((len(drafts) - 1) / (drafts[-1].at - drafts[0].at))
        row = {
            "bench": "telegram_drafts",
            "chats": n,
            "engine_ttft_p50_ms": round(statistics.median(baseline) * 1000, 1),
            "first_draft_p50_ms": round(statistics.median(first_ms), 1),
            "first_draft_p99_ms": round(pct(first_ms, 0.99), 1),
            "draft_updates_per_s_per_chat": round(statistics.median(rates), 2) if rates else 0,
        }
        results.append(row)
        print(
            f"{n:>3} chats: first draft p50 {row['first_draft_p50_ms']} ms "
            f"(p99 {row['first_draft_p99_ms']}), engine alone {row['engine_ttft_p50_ms']} ms, "
            f"{row['draft_updates_per_s_per_chat']} draft updates/s per chat"
        )
    await dispatcher.stop_polling()
    await polling
    await cocoon.close()
    await gateway.close()
    await bot.session.close()
    await api.stop()
    server.should_exit = True
    await serving
    for row in results:
        print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ttft-ms", type=float, default=25.0)
    parser.add_argument("--token-ms", type=float, default=15.0)
    args = parser.parse_args()
    chats = [int(n) for n in args.chats.split(",")]
    asyncio.run(run(chats, args.ttft_ms, args.token_ms, args.rounds))


if __name__ == "__main__":
    main()
