"""One confidential request end to end: real broker, real services, real model."""

from __future__ import annotations

import re
import time
import uuid

import httpx
import openai
import pytest
from support.bus_dump import every_record
from support.openai_stream import text_and_usage

from cocoon.network.engine_process import SMOLLM2_MODEL


def client(network) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{network.gateway_url}/v1", api_key=network.api_key)


def test_openai_sdk_non_streaming(network):
    answer = client(network).chat.completions.create(
        model=SMOLLM2_MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
    )
    assert answer.choices[0].message.content.strip()
    assert answer.usage.prompt_tokens > 0
    assert 0 < answer.usage.completion_tokens <= 16


def test_openai_sdk_streaming_with_usage(network):
    stream = client(network).chat.completions.create(
        model=SMOLLM2_MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = text_and_usage(stream)
    assert text.strip()
    assert usage is not None and 0 < usage.completion_tokens <= 24


def test_unknown_model_is_404_at_once(network):
    started = time.monotonic()
    with pytest.raises(openai.NotFoundError):
        client(network).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert time.monotonic() - started < 2.0


def test_bad_key_is_401(network):
    response = httpx.post(
        f"{network.gateway_url}/v1/chat/completions",
        headers={"Authorization": "Bearer sk-cocoon-not-a-key"},
        json={"model": SMOLLM2_MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_insufficient_balance_is_402_with_the_exact_shortfall(network, poor_account):
    account, balance = poor_account
    response = httpx.post(
        f"{network.gateway_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {network.api_keys[account]}"},
        json={
            "model": SMOLLM2_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 100,
        },
        timeout=30,
    )
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "insufficient_quota"
    shortfall = int(re.search(r"balance: (\d+) nanoTON short", error["message"]).group(1))
    required = int(re.search(r"cost up to (\d+) nanoTON", error["message"]).group(1))
    assert shortfall == required - balance


async def test_privacy_canary_never_on_the_bus(network, kafka_bootstrap):
    canary = f"CANARY-{uuid.uuid4().hex}"
    async with openai.AsyncOpenAI(
        base_url=f"{network.gateway_url}/v1", api_key=network.api_key
    ) as sdk:
        answer = await sdk.chat.completions.create(
            model=SMOLLM2_MODEL,
            messages=[{"role": "user", "content": f"Repeat this code exactly: {canary}"}],
            max_tokens=48,
        )
    completion = answer.choices[0].message.content
    assert completion.strip()
    blobs = await every_record(kafka_bootstrap, network_prefix())
    assert blobs, "nothing was read from the bus"
    needles = [canary.encode(), canary[7:23].encode()]
    # Any 24-character run of the completion would betray it (short runs like "the" would not).
    text = completion.encode()
    needles += [text[i : i + 24] for i in range(0, max(1, len(text) - 24), 8) if len(text) >= 24]
    for blob in blobs:
        for needle in needles:
            assert needle not in blob, "plaintext found on the bus"


def network_prefix() -> str:
    import os

    return os.environ["COCOON_TOPIC_PREFIX"]
