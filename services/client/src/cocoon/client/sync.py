"""The sealing transport for synchronous code: plug it into `openai.OpenAI`.

    transport = SyncSealingTransport(gateway_url, api_key, load_config(gateway=gateway_url))
    client = openai.OpenAI(
        base_url="http://cocoon.local/v1", api_key="unused",
        http_client=httpx.Client(transport=transport),
    )

It runs the same `SealedSession` and `SealingTransport` as the async client, on a private event
loop in a daemon thread, so verification results, the collateral cache and the kept receipts are
the same. Each call blocks the calling thread only; a streamed answer is pulled from the loop one
event at a time. `close()` (or `httpx.Client.close()`) ends the session and the thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import httpx

from cocoon.client.config import ClientConfig
from cocoon.client.session import SealedSession
from cocoon.client.transport import SealingTransport

T = TypeVar("T")
_END = object()


class SyncSealingTransport(httpx.BaseTransport):
    def __init__(
        self, gateway_url: str, api_key: str, config: ClientConfig, **session_options: Any
    ) -> None:
        """`session_options` are `SealedSession`'s keyword arguments (receipts, suite, ...)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="cocoon-client-loop", daemon=True
        )
        self._thread.start()
        # Made on the loop that will use it: httpx binds its connections to that loop.
        self.session = self._run(_session(gateway_url, api_key, config, session_options))
        self._sealing = SealingTransport(self.session)
        self._closed = False

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the SyncSealingTransport is closed")
        forwarded = httpx.Request(
            request.method, request.url, headers=request.headers, content=request.read()
        )
        response = self._run(self._sealing.handle_async_request(forwarded))
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_PulledStream(self, response.stream),
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._run(self.session.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def _session(
    gateway_url: str, api_key: str, config: ClientConfig, options: dict[str, Any]
) -> SealedSession:
    return SealedSession(gateway_url, api_key, config, **options)


class _PulledStream(httpx.SyncByteStream):
    """An async response body read from the calling thread, one piece at a time."""

    def __init__(self, owner: SyncSealingTransport, stream: Any) -> None:
        self._owner = owner
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        pieces = aiter(self._stream)
        while (piece := self._owner._run(_next(pieces))) is not _END:
            yield piece

    def close(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None and not self._owner._closed:
            self._owner._run(aclose())


async def _next(pieces: AsyncIterator[bytes]) -> Any:
    return await anext(pieces, _END)
