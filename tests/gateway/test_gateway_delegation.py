"""A front end's delegating key acts for its end users' accounts, and only for those."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from gateway_doubles import MODEL, ScriptedBackend

from cocoon.gateway.api import KeyStore

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def _post(app: FastAPI, key: str, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {key}", **headers},
        )


async def test_a_delegating_key_is_charged_to_the_named_account(
    app: FastAPI, keys: KeyStore, backend: ScriptedBackend
):
    bot = keys.create("telegram-bot", delegate_prefix="tg-")
    response = await _post(app, bot, {"X-Cocoon-Account": "tg-42"})
    assert response.status_code == 200
    assert backend.submitted[-1][0] == "tg-42"
    response = await _post(app, bot, {})
    assert response.status_code == 200 and backend.submitted[-1][0] == "telegram-bot"


async def test_no_key_acts_for_an_account_it_was_not_given(
    app: FastAPI, keys: KeyStore, backend: ScriptedBackend, api_key: str
):
    bot = keys.create("telegram-bot", delegate_prefix="tg-")
    for key, account in (
        (api_key, "tg-42"),  # an ordinary key names no other account
        (bot, "acct-1"),  # outside the prefix
        (bot, "tg-"),  # the prefix alone
        (bot, "tg-1:x"),  # not a billing account id
    ):
        response = await _post(app, key, {"X-Cocoon-Account": account})
        assert response.status_code == 403, (account, response.text)
        assert response.json()["error"]["code"] == "permission_denied"
    assert backend.submitted == []
