"""`cocoon run telegram`: the bot as a service (long polling, or a webhook in Kubernetes)."""

from __future__ import annotations

import asyncio
import logging

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web

from cocoon.client import load_config
from cocoon.core.bus.broadcast import BroadcastReader
from cocoon.core.bus.consumer import BusConsumer
from cocoon.core.bus.producer import BusProducer
from cocoon.core.codec import models
from cocoon.core.contracts import Topic
from cocoon.core.runtime.service import Service
from cocoon.telegram.balances import BALANCES_TOPIC, Balances
from cocoon.telegram.bot import CocoonBot
from cocoon.telegram.gateway import GatewayClient
from cocoon.telegram.refunds import REFUNDS_TOPIC, RefundDesk
from cocoon.telegram.sealed import SealedGatewayClient
from cocoon.telegram.settings import Settings

log = logging.getLogger(__name__)

TOPUPS_TOPIC = Topic.BILLING_TOPUPS
WEBHOOK_PATH = "/telegram/webhook"


def _gateway_client(settings: Settings, api_key: str) -> GatewayClient:
    if settings.telegram_sealing == "gateway":
        return GatewayClient(settings.gateway_url, api_key)
    # Without a configuration pinning the registry key, refuse to start rather than trust the
    # gateway (ConfigError names the files it looked for).
    config = load_config(settings.telegram_client_config_file, gateway=settings.gateway_url)
    return SealedGatewayClient(settings.gateway_url, api_key, config)


class TelegramService(Service):
    name = "telegram"

    def __init__(self, settings: Settings) -> None:
        token, api_key = settings.token(), settings.api_key()
        if not token:
            raise ValueError("no bot token: set COCOON_TELEGRAM_TOKEN or _FILE")
        if not api_key:
            raise ValueError("no gateway key: set COCOON_GATEWAY_API_KEY or _FILE")
        self.settings = settings
        self.producer = BusProducer(settings.kafka_bootstrap, client_id="telegram")
        self.balances = Balances(settings.telegram_account_prefix)
        self.reader = BroadcastReader(
            settings.kafka_bootstrap,
            [BALANCES_TOPIC],
            self.balances.on_record,
            from_beginning=True,
            client_id="telegram-balances",
        )
        self.gateway = _gateway_client(settings, api_key)
        session = AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
        self.bot = Bot(token, session=session)
        self.cocoon = CocoonBot(settings, self.gateway, self.balances, self._publish_topup)
        self.refunds = RefundDesk(self.bot, settings.telegram_account_prefix, self._publish_topup)
        self.refunds_consumer = BusConsumer(
            settings.kafka_bootstrap,
            [REFUNDS_TOPIC],
            group_id=settings.refunds_group,
            handler=self.refunds.on_record,
            client_id="telegram-refunds",
        )
        self.dispatcher = Dispatcher()
        self.dispatcher.include_router(self.cocoon.router())
        self._reader_task: asyncio.Task[None] | None = None
        self._refunds_task: asyncio.Task[None] | None = None
        self._reader_stop = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def _publish_topup(self, topup: models.TopUp) -> None:
        await self.producer.send(TOPUPS_TOPIC, topup)  # waits for the broker's ack (acks=all)

    async def start(self) -> None:
        await self.producer.start()
        await self.reader.start()
        # Balances known at start are loaded before the first update is handled.
        await self.reader.catch_up(timeout_s=60)
        self._reader_task = asyncio.create_task(self.reader.run(self._reader_stop))
        await self.refunds_consumer.start()
        self._refunds_task = asyncio.create_task(
            self.refunds.run(self.refunds_consumer, self._reader_stop)
        )
        await self.cocoon.register_commands(self.bot)
        if self.settings.telegram_mode == "webhook":
            await self._start_webhook()

    async def _start_webhook(self) -> None:
        secret = self.settings.webhook_secret()
        app = web.Application()
        # Answered only once handled: Telegram redelivers an update whose handler failed.
        SimpleRequestHandler(
            self.dispatcher, self.bot, secret_token=secret, handle_in_background=False
        ).register(app, path=WEBHOOK_PATH)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.listen_host, self.settings.http_port)
        await site.start()
        await self.bot.set_webhook(
            self.settings.telegram_webhook_url.rstrip("/") + WEBHOOK_PATH,
            secret_token=secret,
            allowed_updates=self.dispatcher.resolve_used_update_types(),
        )

    async def run(self, stopping: asyncio.Event) -> None:
        if self.settings.telegram_mode == "webhook":
            await stopping.wait()
            return
        # Handlers run one at a time (answers go to background tasks): an update is confirmed
        # to Telegram only after its handler, so a payment is never confirmed before its credit.
        polling = asyncio.create_task(
            self.dispatcher.start_polling(
                self.bot,
                handle_as_tasks=False,
                handle_signals=False,
                close_bot_session=False,
                allowed_updates=self.dispatcher.resolve_used_update_types(),
            )
        )
        stop = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait({polling, stop}, return_when=asyncio.FIRST_COMPLETED)
        if polling not in done:
            await self.dispatcher.stop_polling()
        await polling

    async def close(self) -> None:
        await self.cocoon.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._reader_stop.set()
        if self._reader_task is not None:
            await self._reader_task
        if self._refunds_task is not None:
            await self._refunds_task
        await self.refunds_consumer.stop()
        await self.reader.stop()
        await self.gateway.close()
        await self.bot.session.close()
        await self.producer.stop()


def build(settings: Settings) -> TelegramService:
    return TelegramService(settings)
