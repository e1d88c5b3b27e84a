"""The bot as a client that seals: it verifies the workers itself, seals each prompt to them and
opens the answer itself, so the operator's gateway relays only ciphertext
(docs/sealed-requests.md). The bot necessarily reads what Telegram delivers to it.

Same events as the gateway-sealed path (gateway.py); `Finished` also carries the worker's
verified usage receipt and how the bot verified that worker, for /usage and /verify.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from cocoon.client import ClientConfig, ClientError, NoTrustedWorker, SealedSession
from cocoon.client import GatewayError as ClientGatewayError
from cocoon.telegram.gateway import (
    Answer,
    Delta,
    Finished,
    GatewayClient,
    GatewayError,
    Started,
    incomplete,
)

CHAT_ENDPOINT = "chat.completions"


class SealedGatewayClient(GatewayClient):
    """`models()` as the gateway lists them (public); `chat()` sealed end to end."""

    def __init__(
        self, base_url: str, api_key: str, config: ClientConfig, *, timeout_s: float = 120.0
    ) -> None:
        super().__init__(base_url, api_key, timeout_s=timeout_s)
        http = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0))
        self._session = SealedSession(base_url, api_key, config, http=http)

    async def close(self) -> None:
        await self._session.aclose()
        await super().close()

    async def chat(
        self, account_id: str, model: str, messages: list[dict[str, str]], max_tokens: int
    ) -> AsyncIterator[Started | Delta | Finished]:
        body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
        finished: Finished | None = None
        try:
            # Co-partitioned with the account it bills, as the gateway requires.
            request_id = await self._session.new_request_id(account=account_id)
            yield Started(request_id)
            answer = Answer(request_id)
            opened = self._session.stream(
                CHAT_ENDPOINT, body, account=account_id, request_id=request_id
            )
            # Closed with this iterator: a stopped answer disconnects, the gateway cancels it.
            async with contextlib.aclosing(opened) as chunks:
                async for chunk in chunks:  # to the sealed final chunk, which has the receipt
                    for event in answer.events(chunk):
                        if isinstance(event, Finished):
                            finished = event
                        else:
                            yield event
        except ClientGatewayError as exc:
            error = exc.body.get("error") if isinstance(exc.body, dict) else None
            error = error if isinstance(error, dict) else {}
            code = str(error.get("code") or error.get("type") or "http_error")
            raise GatewayError(exc.status, code, str(error.get("message", exc))) from exc
        except NoTrustedWorker as exc:
            raise GatewayError(503, "no_trusted_worker", str(exc)) from exc
        except ClientError as exc:
            raise GatewayError(502, "verification_failed", str(exc)) from exc
        except httpx.HTTPError as exc:
            message = f"The network is unreachable: {exc}"
            raise GatewayError(503, "gateway_unreachable", message) from exc
        if finished is None:
            raise incomplete()
        yield self._attested(finished)

    def _attested(self, finished: Finished) -> Finished:
        worker = self._session.last_worker
        return Finished(
            finished.request_id,
            finished.finish_reason,
            finished.prompt_tokens,
            finished.completion_tokens,
            receipt=self._session.last_receipt,
            worker=worker.to_dict() if worker is not None else None,
        )
