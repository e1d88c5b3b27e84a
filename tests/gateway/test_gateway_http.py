"""The HTTP surface through httpx's ASGI transport: statuses, shapes, streaming, the seam."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from gateway_doubles import MODEL, ScriptedBackend

from cocoon.gateway.api import ApiSettings, KeyStore, create_app


@pytest.fixture
async def client(app: FastAPI, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://gateway",
        headers={"Authorization": f"Bearer {api_key}"},
    ) as c:
        yield c


def _chat(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **extra}


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def _events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    events = text.strip("\n").split("\n\n")
    assert all(e.startswith("data: ") for e in events)
    return [e.removeprefix("data: ") for e in events]


async def test_chat_completion(client: httpx.AsyncClient, backend: ScriptedBackend):
    r = await client.post("/v1/chat/completions", json=_chat(max_tokens=50, user="u-7"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["id"].startswith("chatcmpl-")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from the enclave!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"]["prompt_tokens"] == 7 and body["usage"]["total_tokens"] == 10
    account, request = backend.submitted[0]
    assert account == "acct-1" and request.max_tokens == 50 and request.user == "u-7"
    assert r.headers["x-request-id"] == request.request_id
    assert "user" not in request.body  # never forwarded to the engine
    assert backend.completed == [request.request_id]


async def test_chat_stream_with_usage(client: httpx.AsyncClient):
    r = await client.post(
        "/v1/chat/completions", json=_chat(stream=True, stream_options={"include_usage": True})
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks[:-1])
    assert text == "Hello from the enclave!"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


async def test_stream_without_include_usage_has_no_usage_chunk(client: httpx.AsyncClient):
    r = await client.post("/v1/chat/completions", json=_chat(stream=True))
    chunks = [json.loads(e) for e in _events(r.text)[:-1]]
    assert all(c["choices"] for c in chunks) and all("usage" not in c for c in chunks)


async def test_completions_streaming_and_not(client: httpx.AsyncClient):
    r = await client.post("/v1/completions", json={"model": MODEL, "prompt": "Once"})
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == "Hello from the enclave!"
    r = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "Once", "stream": True}
    )
    chunks = [json.loads(e) for e in _events(r.text)[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello from the enclave!"


async def test_engine_body_strips_extensions(client: httpx.AsyncClient, backend: ScriptedBackend):
    await client.post(
        "/v1/chat/completions",
        json=_chat(max_coefficient=1500, timeout=30, max_completion_tokens=9, max_tokens=99),
    )
    _, request = backend.submitted[0]
    assert (request.max_coefficient, request.timeout, request.max_tokens) == (1500, 30, 9)
    assert request.body["max_tokens"] == 9 and request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    for key in ("max_coefficient", "timeout", "max_completion_tokens"):
        assert key not in request.body


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (_chat(functions=[]), "functions", "Unrecognized request argument"),
        (_chat(tool_choice="required"), "tool_choice", "needs tools"),
        (_chat(tools=[WEATHER], tool_choice=_named("other")), "tool_choice", "not in tools"),
        (
            _chat(tools=[{"type": "function", "function": {"name": "a b"}}]),
            "tools[0].function.name",
            "pattern",
        ),
        (_chat(logit_bias={}), "logit_bias", "Unrecognized request argument"),
        (_chat(temperature="hot"), "temperature", "Invalid value"),
        (_chat(stream="yes"), "stream", "Invalid value"),
        (_chat(max_tokens="5"), "max_tokens", "Invalid value"),
        (_chat(temperature=2.5), "temperature", "less than or equal to 2"),
        (_chat(max_tokens=0), "max_tokens", "greater than or equal to 1"),
        (_chat(max_tokens=100_000), "max_tokens", "at most 4096"),
        (_chat(n=2), "n", "less than or equal to 1"),
        (_chat(timeout=10_000), "timeout", "at most"),
        (_chat(stream_options={"include_usage": True}), "stream_options", "only allowed"),
        ({"model": MODEL}, "messages", "Missing required parameter"),
        (_chat(messages=[{"role": "user", "content": "x", "x": 1}]), "messages[0].x", "Unrec"),
        (_chat(messages=[{"role": "tool", "content": "x"}]), "messages[0]", "tool_call_id"),
        (_chat(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role", "Invalid"),
        (_chat(messages=[{"role": "user"}]), "messages[0]", "content is required"),
        (_chat(messages=[]), "messages", "at least 1"),
    ],
)
async def test_invalid_requests_are_400(client: httpx.AsyncClient, body, param, fragment):
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = _error(r)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert fragment in error["message"]


async def test_malformed_json_is_400(client: httpx.AsyncClient):
    for raw in (b"{not json", b"[1, 2]", b""):
        r = await client.post(
            "/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400, (raw, r.text)
        assert _error(r)["type"] == "invalid_request_error"


async def test_oversized_prompt_and_body(backend: ScriptedBackend, keys: KeyStore, api_key: str):
    app = create_app(backend, keys, ApiSettings(max_prompt_chars=10, max_body_bytes=2000))
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://g", headers=headers) as c:
        r = await c.post(
            "/v1/chat/completions", json=_chat(messages=[{"role": "user", "content": "x" * 11}])
        )
        assert r.status_code == 400 and _error(r)["code"] == "prompt_too_large"
        r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "y" * 5000})
        assert r.status_code == 400 and _error(r)["code"] == "request_too_large"
        r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "y" * 10})
        assert r.status_code == 200
    assert len(backend.submitted) == 1


@pytest.mark.parametrize(
    ("header", "message"),
    [(None, "didn't provide"), ("Bearer sk-cocoon-nope", "Incorrect"), ("Basic abc", "didn't")],
)
async def test_bad_or_missing_key_is_401(app: FastAPI, header, message):
    headers = {"Authorization": header} if header else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://g", headers=headers) as c:
        for r in (await c.post("/v1/chat/completions", json=_chat()), await c.get("/v1/models")):
            assert r.status_code == 401
            error = _error(r)
            assert error["code"] == "invalid_api_key" and message in error["message"]


async def test_revoked_key_is_401(client: httpx.AsyncClient, keys: KeyStore):
    keys.revoke(keys.records()[0].key_id)
    assert (await client.get("/v1/models")).status_code == 401


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("poor", 402, "insufficient_quota"),
        ("unknown-model", 404, "model_not_found"),
        ("busy", 503, "no_worker_available"),
        ("pricey", 503, "max_coefficient_too_low"),
        ("late", 504, "timeout"),
        ("silent", 502, "worker_lost"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_backend_errors_keep_their_status(
    client: httpx.AsyncClient, backend: ScriptedBackend, model, status, code, stream
):
    r = await client.post("/v1/chat/completions", json=_chat(model=model, stream=stream))
    assert r.status_code == status, r.text
    assert _error(r)["code"] == code
    if model == "poor":
        assert "1234 nanoTON" in _error(r)["message"]
    if model == "pricey":
        assert "2500" in _error(r)["message"] and _error(r)["param"] == "max_coefficient"
    # Retrying cannot help until the client changes something; the SDKs obey this header.
    assert (r.headers.get("x-should-retry") == "false") == (model in ("poor", "pricey"))
    assert r.headers["x-request-id"]


async def test_deadline_gives_504(backend: ScriptedBackend, client: httpx.AsyncClient):
    r = await client.post("/v1/chat/completions", json=_chat(model="slow", timeout=0.2))
    assert r.status_code == 504 and _error(r)["type"] == "server_error"
    assert len(backend.cancelled) == 1  # the backend was told to stop


async def test_worker_lost_mid_stream_is_an_error_event(client: httpx.AsyncClient):
    r = await client.post("/v1/chat/completions", json=_chat(model="dies", stream=True))
    assert r.status_code == 200
    events = _events(r.text)
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:2]] == ["Hel", "lo"]
    # In-band, then the stream ends as every stream does.
    assert json.loads(events[-2])["error"]["code"] == "worker_lost"
    assert events[-1] == "[DONE]"


async def test_deadline_mid_stream_is_an_error_event(
    client: httpx.AsyncClient, backend: ScriptedBackend
):
    r = await client.post(
        "/v1/chat/completions", json=_chat(model="trickle", stream=True, timeout=0.3)
    )
    assert r.status_code == 200
    events = _events(r.text)
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "a"
    assert json.loads(events[-2])["error"]["code"] == "timeout" and events[-1] == "[DONE]"
    assert backend.cancelled == [backend.submitted[0][1].request_id]


async def test_backend_bug_mid_stream_is_an_error_event_not_a_hang(client: httpx.AsyncClient):
    r = await client.post("/v1/chat/completions", json=_chat(model="crashes", stream=True))
    events = _events(r.text)
    assert json.loads(events[-2])["error"]["code"] == "internal_error" and events[-1] == "[DONE]"


@pytest.mark.parametrize("model", ["repeats-finish", "no-finish", MODEL])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
@pytest.mark.parametrize("include_usage", [False, True])
async def test_each_streamed_choice_finishes_exactly_once_and_last(
    client: httpx.AsyncClient, model, endpoint, include_usage
):
    if endpoint == "chat":
        path, body = "/v1/chat/completions", _chat(model=model)
    else:
        path, body = "/v1/completions", {"model": model, "prompt": "Hi"}
    body.update(stream=True, stream_options={"include_usage": include_usage})
    r = await client.post(path, json=body)
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
        chunks = chunks[:-1]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finishes[-1] == "stop"
    assert finishes[:-1] == [None] * (len(finishes) - 1)


async def test_worker_lost_without_stream_is_502(client: httpx.AsyncClient):
    r = await client.post("/v1/chat/completions", json=_chat(model="dies"))
    assert r.status_code == 502 and _error(r)["code"] == "worker_lost"


async def test_models_lists_only_attested(client: httpx.AsyncClient):
    r = await client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL]
    assert body["data"][0]["object"] == "model" and body["data"][0]["attested_workers"] == 2
    assert (await client.get(f"/v1/models/{MODEL}")).json()["id"] == MODEL
    r = await client.get("/v1/models/nobody-attested")
    assert r.status_code == 404 and _error(r)["code"] == "model_not_found"


async def test_unknown_route_and_method_use_openai_shape(client: httpx.AsyncClient):
    r = await client.post("/v1/assistants", json={})  # not served: nothing is stored
    assert r.status_code == 404 and _error(r)["code"] == "not_found"
    r = await client.get("/v1/chat/completions")
    assert r.status_code == 405 and _error(r)["code"] == "method_not_allowed"
    assert r.headers["allow"] == "POST"
    r = await client.post("/v1/models")
    assert r.status_code == 405 and r.headers["allow"] == "GET"


async def test_every_response_has_a_request_id(app: FastAPI, client: httpx.AsyncClient):
    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("boom")

    answers = [
        await client.post("/v1/chat/completions", json=_chat()),
        await client.post("/v1/chat/completions", json=_chat(stream=True)),
        await client.post("/v1/chat/completions", json={"model": MODEL}),
        await client.get("/v1/nothing-here"),
        await client.get("/v1/models", headers={"Authorization": "Bearer wrong"}),
        await client.get("/boom"),
    ]
    assert [r.status_code for r in answers] == [200, 200, 400, 404, 401, 500]
    ids = [r.headers.get("x-request-id") for r in answers]
    assert all(ids) and len(set(ids)) == len(ids)


async def test_explicit_nulls_mean_the_default(client: httpx.AsyncClient, backend: ScriptedBackend):
    nulls = dict.fromkeys(
        ("stream", "stream_options", "temperature", "top_p", "n", "stop", "max_tokens", "seed",
         "presence_penalty", "frequency_penalty", "response_format", "user",
         "max_completion_tokens", "parallel_tool_calls"),
    )  # fmt: skip
    r = await client.post("/v1/chat/completions", json=_chat(**nulls))
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"  # stream: null is not a stream
    r = await client.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "x", "stream": None, "echo": None, "suffix": None},
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/chat/completions",
        json=_chat(stream=True, stream_options={"include_usage": None}),
    )
    assert r.status_code == 200 and '"usage"' not in r.text


async def test_fastapi_validation_errors_become_400(app: FastAPI, client: httpx.AsyncClient):
    @app.get("/probe")
    async def probe(count: int) -> dict:
        return {"count": count}

    r = await client.get("/probe", params={"count": "many"})
    assert r.status_code == 400
    assert _error(r)["param"] == "count"


async def test_unexpected_exception_is_500_in_openai_shape(app: FastAPI, client: httpx.AsyncClient):
    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("boom")

    r = await client.get("/boom")
    assert r.status_code == 500 and _error(r)["code"] == "internal_error"
    assert "boom" not in r.text  # internals stay in the log


async def test_rate_limit_is_429_with_retry_after(backend: ScriptedBackend, keys: KeyStore):
    now = [0.0]
    app = create_app(
        backend,
        keys,
        ApiSettings(rate_limit_per_second=0.5, rate_limit_burst=2),
        clock=lambda: now[0],
    )
    a, b = keys.create("acct-a"), keys.create("acct-b")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://g") as c:

        async def call(key: str) -> httpx.Response:
            return await c.get("/v1/models", headers={"Authorization": f"Bearer {key}"})

        assert [(await call(a)).status_code for _ in range(2)] == [200, 200]
        limited = await call(a)
        assert limited.status_code == 429
        assert _error(limited)["code"] == "rate_limit_exceeded"
        assert limited.headers["retry-after"] == "2"
        assert (await call(b)).status_code == 200  # per key
        now[0] = 2.0
        assert (await call(a)).status_code == 200
