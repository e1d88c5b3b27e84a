"""`POST /v1/embeddings` at the HTTP surface: what is accepted, what the backend receives and
how the worker's chunks are joined (the Kafka pipeline is the scripted double here; the real
network's answers are checked in tests/e2e/test_embeddings.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from gateway_doubles import EMBEDDER, ScriptedBackend

from cocoon.gateway.api import ApiSettings


@pytest.fixture
async def client(app: FastAPI, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gw", headers=headers
    ) as http:
        yield http


@pytest.mark.parametrize(
    ("given", "count"),
    [("one text", 1), (["a", "b", "c"], 3), ([101, 7592], 1), ([[7592], [2088, 2088]], 2)],
)
async def test_each_input_form_is_answered_in_openais_shape(
    client: httpx.AsyncClient, backend: ScriptedBackend, given: object, count: int
):
    body = {"model": EMBEDDER, "input": given, "user": "u-1", "max_coefficient": 1500}
    r = await client.post("/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["object"] == "list" and answer["model"] == EMBEDDER
    assert [d["index"] for d in answer["data"]] == list(range(count))
    assert all(d["object"] == "embedding" for d in answer["data"])
    assert answer["usage"] == {"prompt_tokens": 3 * count, "total_tokens": 3 * count}
    assert r.headers["x-cocoon-sealed-by"] == "gateway" and r.headers["x-request-id"]

    _, request = backend.submitted[-1]
    # The engine gets the request as OpenAI defines it; Cocoon's own fields stay here.
    assert request.endpoint == "embeddings" and request.body == {"model": EMBEDDER, "input": given}
    assert request.max_coefficient == 1500 and request.user == "u-1"
    assert request.max_tokens == 1 and request.stream is False
    assert request.prompt_bytes >= len(str(given))


async def test_explicit_nulls_mean_the_defaults_and_options_reach_the_engine(
    client: httpx.AsyncClient, backend: ScriptedBackend
):
    body = {"model": EMBEDDER, "input": "x", "encoding_format": None, "dimensions": None}
    assert (await client.post("/v1/embeddings", json=body)).status_code == 200
    assert backend.submitted[-1][1].body == {"model": EMBEDDER, "input": "x"}
    body = {"model": EMBEDDER, "input": "x", "encoding_format": "base64", "dimensions": 384}
    assert (await client.post("/v1/embeddings", json=body)).status_code == 200
    sent = backend.submitted[-1][1].body
    assert sent["encoding_format"] == "base64" and sent["dimensions"] == 384


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": ["a", 1]}, "input"),
        ({"input": [-1]}, "input"),
        ({"input": [True]}, "input"),
        ({"input": ["a"] * 2049}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": "384"}, "dimensions"),
        ({"input": "x", "stream": True}, "stream"),
        ({"input": "x", "model": ""}, "model"),
        ({}, "input"),
    ],
)
async def test_what_the_specification_refuses_is_a_400_naming_the_parameter(
    client: httpx.AsyncClient, backend: ScriptedBackend, body: dict, param: str
):
    r = await client.post("/v1/embeddings", json={"model": EMBEDDER, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert not backend.submitted


async def test_an_input_over_the_prompt_limit_is_refused_before_any_hold(
    client: httpx.AsyncClient, backend: ScriptedBackend
):
    big = ["word " * 1000] * (ApiSettings().max_prompt_chars // 5000 + 1)
    r = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": big})
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_large"
    assert r.json()["error"]["param"] == "input" and not backend.submitted


async def test_embeddings_with_a_gap_are_a_lost_worker_not_a_wrong_answer(
    client: httpx.AsyncClient,
):
    r = await client.post("/v1/embeddings", json={"model": "embeds-a-gap", "input": "x"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "worker_lost"
