"""`cocoon client serve` for e2e tests: the local proxy in a thread, with a TCP recorder between
it and the gateway that keeps every byte (to show what the gateway saw)."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import openai

from cocoon.client.config import load_config
from cocoon.client.receipts import ReceiptStore
from cocoon.client.server import ProxyServer
from cocoon.client.session import SealedSession
from cocoon.client.transport import SealingTransport


class Recorder:
    """A TCP relay in front of the gateway that keeps every byte in both directions."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.seen = bytearray()
        self.port = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    self.seen += data
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


class Proxy:
    """`cocoon client serve` in a thread: its own loop, a recorder between it and the gateway."""

    def __init__(self, network) -> None:
        self.network = network
        self.loop = asyncio.new_event_loop()
        self.recorder = Recorder(network.http_port)
        self.receipts = ReceiptStore()
        self.url = ""

    def __enter__(self) -> Proxy:
        ready = threading.Event()

        async def main() -> None:
            self._recorder_server = await self.recorder.start()
            gateway = f"http://127.0.0.1:{self.recorder.port}"
            config = load_config(gateway=self.network.gateway_url)
            self.session = SealedSession(
                gateway, self.network.api_key, config, receipts=self.receipts
            )
            self.server = ProxyServer(SealingTransport(self.session), "127.0.0.1", 0)
            await self.server.start()
            self.url = f"http://127.0.0.1:{self.server.port}/v1"
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(main(), self.loop).result(30)
        assert ready.wait(5)
        return self

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            await self.server.stop()
            self._recorder_server.close()
            await self.session.aclose()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def sdk(self, api_key: str = "sk-local-proxy", timeout: float = 90) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=api_key, timeout=timeout, max_retries=0)
