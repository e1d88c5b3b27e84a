"""The gateway's client-sealed interface over HTTP (docs/sealed-requests.md, "Messages").

Evidence, the registry and collateral are cached briefly: the registry and collateral change
rarely and a verification result is cached on top of them (verify.py), so the common request
costs one HTTP call to the gateway besides the sealed request itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx

from cocoon.client.errors import GatewayError, WireError
from cocoon.client.seal import SealedEnvelope

# Names the end user's billing account when a delegating key calls (docs/api.md).
ACCOUNT_HEADER = "X-Cocoon-Account"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SealedChunk:
    worker_id: str
    attempt: int
    seq: int
    final: bool
    ciphertext: bytes
    error_code: str | None


class _Cached:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[float, Any]] = {}

    def get(self, key: str, max_age_s: float | None = None) -> Any:
        hit = self._items.get(key)
        age = self.ttl_s if max_age_s is None else max_age_s
        return hit[1] if hit is not None and time.monotonic() - hit[0] < age else None

    def put(self, key: str, value: Any) -> Any:
        self._items[key] = (time.monotonic(), value)
        return value


async def _error(response: httpx.Response) -> GatewayError:
    await response.aread()
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text[:500] or f"HTTP {response.status_code}"}}
    return GatewayError(
        response.status_code,
        body,
        response.headers.get("retry-after"),
        response.headers.get("x-should-retry"),
    )


class GatewayApi:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        http: httpx.AsyncClient,
        *,
        workers_ttl_s: float = 10.0,
        registry_ttl_s: float = 30.0,
        collateral_ttl_s: float = 600.0,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.api_key = api_key
        self.http = http
        self._workers = _Cached(workers_ttl_s)
        self._registry = _Cached(registry_ttl_s)
        self._collateral = _Cached(collateral_ttl_s)
        # The key the gateway says signs its registry (hex): compared with the pinned key to
        # explain refusals, never used to verify anything.
        self.registry_key_hint: str | None = None
        self._refreshing: dict[str, asyncio.Task] = {}  # model -> its worker list's refresh
        self._accounts: dict[str, tuple[str, int]] = {}  # api key -> account, partitions

    async def models(self, path: str, api_key: str | None = None) -> httpx.Response:
        """The gateway's own `/v1/models` routes, answered as they are."""
        headers = {"Authorization": f"Bearer {api_key or self.api_key}"}
        return await self.http.get(self.base + path, headers=headers)

    async def _get_json(self, path: str, **params: str) -> Any:
        response = await self.http.get(self.base + path, params=params or None)
        if response.status_code != 200:
            raise await _error(response)
        return response.json()

    async def workers(self, model: str) -> list[dict[str, Any]]:
        """The gateway's live workers for `model`. Past its TTL the list is still answered (up
        to 3 TTLs old) while a refresh runs beside the request: the gateway only places on
        candidates it sees alive, so a stale list costs at worst a candidate fewer, where a
        refresh on the request's path cost a gateway round trip (p90 37 ms under load)."""
        cached = self._workers.get(model)
        if cached is not None:
            return cached
        stale = self._workers.get(model, max_age_s=3 * self._workers.ttl_s)
        if stale is None:
            return await self._fetch_workers(model)
        if model not in self._refreshing:
            task = asyncio.create_task(self._fetch_workers(model))
            self._refreshing[model] = task
            task.add_done_callback(lambda t: self._refreshed(model, t))
        return stale

    async def _fetch_workers(self, model: str) -> list[dict[str, Any]]:
        workers = (await self._get_json("/v1/cocoon/workers", model=model))["workers"]
        return self._workers.put(model, workers)

    def _refreshed(self, model: str, task: asyncio.Task) -> None:
        self._refreshing.pop(model, None)
        if not task.cancelled() and task.exception() is not None:
            # The next request past the stale window fetches on its path and reports it.
            log.debug("background refresh of the worker list failed: %r", task.exception())

    async def registry(self) -> list[dict[str, Any]]:
        cached = self._registry.get("")
        if cached is None:
            doc = await self._get_json("/v1/cocoon/registry")
            hint = doc.get("registry_public_key")
            self.registry_key_hint = hint if isinstance(hint, str) else None
            cached = self._registry.put("", doc["entries"])
        return cached

    async def collateral(self, fmspc: str) -> dict[str, Any] | None:
        cached = self._collateral.get(fmspc)
        if cached is None:
            try:
                doc = (await self._get_json(f"/v1/cocoon/collateral/{fmspc}"))["collateral"]
            except GatewayError as exc:
                if exc.status == 404:
                    return None
                raise
            cached = self._collateral.put(fmspc, doc)
        return cached

    async def account(self, api_key: str | None = None) -> tuple[str, int]:
        """The key's account and the partition count its request ids are minted for
        (`GET /v1/cocoon/account`); asked once per key."""
        key = api_key or self.api_key
        known = self._accounts.get(key)
        if known is None:
            response = await self.http.get(
                self.base + "/v1/cocoon/account", headers={"Authorization": f"Bearer {key}"}
            )
            if response.status_code != 200:
                raise await _error(response)
            doc = response.json()
            account, partitions = doc.get("account_id"), doc.get("request_id_partitions")
            if not isinstance(account, str) or not isinstance(partitions, int) or partitions < 1:
                raise WireError("the gateway's account answer has no account or partition count")
            known = self._accounts[key] = (account, partitions)
        return known

    async def statement(self, since_ms: int, api_key: str | None = None) -> list[dict[str, Any]]:
        """The account's charges from `since_ms` on (`GET /v1/cocoon/statement`)."""
        response = await self.http.get(
            self.base + "/v1/cocoon/statement",
            params={"since": str(since_ms)},
            headers={"Authorization": f"Bearer {api_key or self.api_key}"},
        )
        if response.status_code != 200:
            raise await _error(response)
        charges = response.json().get("charges")
        if not isinstance(charges, list):
            raise WireError("the gateway's statement has no list of charges")
        return charges

    async def send(
        self,
        envelope: SealedEnvelope,
        *,
        endpoint: str,
        max_tokens: int,
        max_coefficient: int | None,
        timeout_s: float | None,
        api_key: str | None = None,
        account: str | None = None,
    ) -> AsyncGenerator[SealedChunk, None]:
        """POST the envelope; yield the sealed chunks as the gateway relays them. `account`:
        the end user's account, for a delegating key acting for it."""
        b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
        suites = {r.suite for r in envelope.recipients}
        if len(suites) != 1:
            raise WireError("one envelope is sealed with one HPKE suite")
        body = {
            "version": 1,
            "request_id": envelope.request_id,
            "endpoint": endpoint,
            "model": envelope.model,
            "max_tokens": max_tokens,
            "max_coefficient": max_coefficient,
            "timeout": timeout_s,
            "suite": suites.pop(),
            "ciphertext": b64(envelope.ciphertext),
            "recipients": [
                {"worker_id": r.worker_id, "enc": b64(r.enc), "wrapped_key": b64(r.wrapped_key)}
                for r in envelope.recipients
            ],
        }
        headers = {"Authorization": f"Bearer {api_key or self.api_key}"}
        if account is not None:
            headers[ACCOUNT_HEADER] = account
        request = self.http.build_request(
            "POST",
            self.base + "/v1/cocoon/sealed",
            json=body,
            headers=headers,
            timeout=httpx.Timeout(None if timeout_s is None else timeout_s + 10, connect=10),
        )
        response = await self.http.send(request, stream=True)
        try:
            if response.status_code != 200:
                raise await _error(response)
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if event.get("type") == "error":
                    raise GatewayError(502, {"error": event.get("error") or {}})
                if event.get("type") != "chunk":
                    continue
                try:
                    yield SealedChunk(
                        str(event["worker_id"]),
                        int(event["attempt"]),
                        int(event["seq"]),
                        bool(event["final"]),
                        base64.b64decode(event["ciphertext"], validate=True),
                        event.get("error_code"),
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise WireError(f"malformed chunk event from the gateway: {exc!r}") from None
        finally:
            await response.aclose()
