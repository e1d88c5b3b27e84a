"""`cocoon client serve`: the sealing transport over plain HTTP on 127.0.0.1, for any OpenAI SDK,
curl or tool. A small HTTP/1.1 server on asyncio streams (one request per connection, the body
by Content-Length, the response closed at its end), so the client needs no web framework."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from cocoon.client.transport import SealingTransport

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 1024 * 1024
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large"}


class ProxyServer:
    def __init__(self, transport: SealingTransport, host: str = "127.0.0.1", port: int = 8181):
        self.transport = transport
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await self._read(reader)
            if isinstance(request, int):
                await self._write_plain(writer, request)
                return
            response = await self.transport.handle_async_request(request)
            await self._write(writer, response)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the caller went away: closing the response stream cancels the work
        except Exception:
            log.exception("proxy request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader) -> httpx.Request | int:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return 413
        if len(head) > MAX_HEAD:
            return 413
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
        except ValueError:
            return 400
        headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        length = next((v for k, v in headers if k.lower() == "content-length"), "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            return 413 if length.isdigit() else 400
        body = await reader.readexactly(int(length)) if int(length) else b""
        keep = [(k, v) for k, v in headers if k.lower() not in ("host", "content-length")]
        return httpx.Request(
            method, f"http://{self.host}:{self.port}{target}", headers=keep, content=body
        )

    @staticmethod
    async def _write_plain(writer: asyncio.StreamWriter, status: int) -> None:
        reason = REASONS.get(status, "Error")
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        writer.write(head.encode())
        await writer.drain()

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, response: httpx.Response) -> None:
        reason = response.reason_phrase or "Response"
        head = [f"HTTP/1.1 {response.status_code} {reason}"]
        for name, value in response.headers.multi_items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                head.append(f"{name}: {value}")
        head.append("Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        try:
            try:
                whole = response.content  # built whole (JSON answers and errors)
            except httpx.ResponseNotRead:
                whole = None
            if whole is not None:
                writer.write(whole)
                await writer.drain()
                return
            async for part in response.aiter_raw():  # a stream, relayed as it is opened
                writer.write(part)
                await writer.drain()
        finally:
            await response.aclose()
