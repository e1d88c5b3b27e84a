"""The official `openai` SDK against the app served by uvicorn on a loopback port."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from gateway_doubles import MODEL, ScriptedBackend, default_backend, serve

from cocoon.gateway.api import ApiSettings, KeyStore, create_app

MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[str, str, ScriptedBackend]]:
    backend, keys = default_backend(), KeyStore()
    key = keys.create("acct-sdk")
    settings = ApiSettings(rate_limit_per_second=1000, rate_limit_burst=1000)
    with serve(create_app(backend, keys, settings)) as url:
        yield url, key, backend


@pytest.fixture
def sdk(live) -> openai.OpenAI:
    url, key, _ = live
    # No retries: each status must surface as its exception at once.
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=10)


def test_chat_non_streaming(sdk: openai.OpenAI):
    completion = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20)
    assert completion.choices[0].message.content == "Hello from the enclave!"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 10


def test_chat_streaming_with_usage(sdk: openai.OpenAI):
    stream = sdk.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the enclave!"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3


def test_completions_both_ways(sdk: openai.OpenAI):
    assert sdk.completions.create(model=MODEL, prompt="Hi").choices[0].text.startswith("Hello")
    streamed = "".join(
        c.choices[0].text for c in sdk.completions.create(model=MODEL, prompt="Hi", stream=True)
    )
    assert streamed == "Hello from the enclave!"


def test_cocoon_extensions_through_extra_body(sdk: openai.OpenAI, live):
    sdk.chat.completions.create(
        model=MODEL, messages=MESSAGES, extra_body={"max_coefficient": 1200, "timeout": 15}
    )
    _, request = live[2].submitted[-1]
    assert (request.max_coefficient, request.timeout) == (1200, 15)


def test_models(sdk: openai.OpenAI):
    assert [m.id for m in sdk.models.list()] == [MODEL]
    assert sdk.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("nobody-attested")


def test_400_bad_request(sdk: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES, extra_body={"tools_x": 1})
    assert caught.value.param == "tools_x" and caught.value.type == "invalid_request_error"


def test_401_bad_key(live):
    url, _, _ = live
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-cocoon-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "invalid_api_key"


def test_402_insufficient_funds(sdk: openai.OpenAI):
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="poor", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 402
    assert caught.value.code == "insufficient_quota" and "1234 nanoTON" in caught.value.message


def test_404_unknown_model(sdk: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


def test_503_no_worker(sdk: openai.OpenAI):
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="busy", messages=MESSAGES)
    assert caught.value.status_code == 503 and caught.value.code == "no_worker_available"


def test_error_mid_stream_raises_api_error(sdk: openai.OpenAI):
    stream = sdk.chat.completions.create(model="dies", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["Hel", "lo"]
    assert caught.value.code == "worker_lost"


def test_429_rate_limited():
    keys = KeyStore()
    key = keys.create("acct-rl")
    app = create_app(
        default_backend(), keys, ApiSettings(rate_limit_per_second=0.01, rate_limit_burst=1)
    )
    with serve(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        client.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            client.models.list()
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_client_disconnect_cancels_the_backend(live):
    url, key, backend = live
    before = set(backend.cancelled)
    with (
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "stall", "messages": MESSAGES, "stream": True},
        ) as response,
    ):
        assert response.status_code == 200
        next(response.iter_lines())  # the stream is live; now hang up
    deadline = time.monotonic() + 5
    while set(backend.cancelled) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert set(backend.cancelled) - before, "the backend was not told the client left"
    assert backend.submitted[-1][1].request_id in backend.cancelled
