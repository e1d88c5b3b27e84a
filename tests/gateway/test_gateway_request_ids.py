"""Request ids on the gateway's paths are co-partitioned with the account they bill (billing's
account shards): minted so on the gateway's own paths, required of a client-sealed request."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI
from gateway_doubles import MODEL, ScriptedBackend

from cocoon.core.request_ids import account_partitions, is_co_partitioned, new_request_id
from cocoon.gateway.api import ApiSettings, KeyStore, create_app
from cocoon.gateway.api.client_sealed import ClientSealed, RelayedChunk


class RelayingSurface:
    """The client-sealed surface: records what it is asked to relay, answers one final chunk."""

    registry_public_key = None

    def __init__(self) -> None:
        self.relayed: list[tuple[str, ClientSealed]] = []

    def workers(self, model: str) -> list[dict[str, Any]]:
        return []

    def registry(self) -> list[dict[str, Any]]:
        return []

    def collateral(self, fmspc: str) -> dict[str, Any] | None:
        return None

    async def relay(self, account_id: str, sealed: ClientSealed) -> AsyncIterator[RelayedChunk]:
        self.relayed.append((account_id, sealed))
        yield RelayedChunk("w-1", 1, 0, True, b"\x00" * 32, None)

    async def charges(self, account_id: str, since_ms: int) -> list[dict[str, Any]]:
        return []


def _sealed(request_id: str) -> dict[str, Any]:
    b64 = base64.b64encode(b"\x01" * 48).decode()
    return {
        "version": 1,
        "request_id": request_id,
        "endpoint": "chat.completions",
        "model": MODEL,
        "max_tokens": 16,
        "suite": "test-suite",
        "ciphertext": b64,
        "recipients": [{"worker_id": "w-1", "enc": b64, "wrapped_key": b64}],
    }


async def _client(app: FastAPI, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://gateway",
        headers={"Authorization": f"Bearer {key}"},
    )


async def test_the_gateway_mints_ids_on_the_accounts_partition(
    app: FastAPI, api_key: str, backend: ScriptedBackend
):
    async with await _client(app, api_key) as client:
        for stream in (False, True):
            for _ in range(5):
                body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
                r = await client.post("/v1/chat/completions", json={**body, "stream": stream})
                assert r.status_code == 200, r.text
                account, request = backend.submitted[-1]
                assert r.headers["x-request-id"] == request.request_id
                assert account == "acct-1" and is_co_partitioned(request.request_id, account)
    assert len({request.request_id for _, request in backend.submitted}) == 10


async def test_a_client_sealed_request_must_be_co_partitioned(backend: ScriptedBackend):
    keys, surface = KeyStore(), RelayingSurface()
    key = keys.create("acct-sealed", name="test")
    app = create_app(backend, keys, ApiSettings(), sealed=surface)
    async with await _client(app, key) as client:
        r = await client.get("/v1/cocoon/account")
        assert r.status_code == 200
        assert r.json() == {"account_id": "acct-sealed", "request_id_partitions": 12}
        assert account_partitions() == 12

        stray = next(
            rid
            for rid in (str(uuid.uuid4()) for _ in range(100))
            if not is_co_partitioned(rid, "acct-sealed")
        )
        r = await client.post("/v1/cocoon/sealed", json=_sealed(stray))
        assert r.status_code == 400
        error = r.json()["error"]
        assert (error["code"], error["param"]) == ("request_id_not_co_partitioned", "request_id")
        assert r.headers["x-request-id"] == stray
        assert surface.relayed == []  # refused before anything went to the bus

        minted = new_request_id("acct-sealed")
        r = await client.post("/v1/cocoon/sealed", json=_sealed(minted))
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == minted
        [(account, sealed)] = surface.relayed
        assert (account, sealed.request.request_id) == ("acct-sealed", minted)

    async with await _client(app, "sk-cocoon-wrong") as client:
        assert (await client.get("/v1/cocoon/account")).status_code == 401
