"""`x-request-id` on every response, errors included, as OpenAI sends it.

The id is chosen when the request arrives, so a 401 or a 400 can be quoted in a support
request just like an answer; an admitted request keeps the same id through the whole network
(it is the `request_id` of every record on the bus). Once the key is known, an admitted request
gets an id co-partitioned with its account (`cocoon.core.request_ids`: billing's shards), which
the response then names.
"""

from __future__ import annotations

import uuid

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cocoon.core.request_ids import new_request_id

HEADER = "x-request-id"


def bind_to_account(request: Request, account_id: str) -> str:
    """Give the request an id co-partitioned with `account_id`; the response names it."""
    return name_request(request, new_request_id(account_id))


def name_request(request: Request, request_id: str) -> str:
    """The id the response names from now on (a client-sealed request brings its own)."""
    request.scope["state"][HEADER] = request_id
    return request_id


class RequestIdMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware), so streamed responses pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[HEADER] = str(uuid.uuid4())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = state[HEADER]  # bound by then
            await send(message)

        await self.app(scope, receive, send_with_id)
