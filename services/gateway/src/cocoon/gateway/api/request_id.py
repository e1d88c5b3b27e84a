"""`x-request-id` on every response, errors included, as OpenAI sends it.

The id is chosen when the request arrives, so a 401 or a 400 can be quoted in a support
request just like an answer; an admitted request keeps the same id through the whole network
(it is the `request_id` of every record on the bus).
"""

from __future__ import annotations

import uuid

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"


def request_id_of(request: Request) -> str:
    """The id the middleware chose for this request."""
    return request.scope["state"][HEADER]


class RequestIdMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware), so streamed responses pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        scope.setdefault("state", {})[HEADER] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)
