"""Conformance with OpenAI's published OpenAPI description (openai/openai-openapi, openapi.yaml).

Request bodies are generated with hypothesis from the parts of `CreateChatCompletionRequest`,
`CreateCompletionRequest` and `CreateEmbeddingRequest` encoded below (what the spec allows,
including parameters Cocoon refuses), then mutated (a key dropped, a value replaced by any JSON,
an unknown key, a body that is not an object). The property: every request gets a 2xx whose
body (or every SSE event) has the spec's response shape, or a 4xx in the spec's `ErrorResponse`
shape; never a 5xx.

The backend is the scripted double of the gateway tests (`ScriptedBackend`): the property is
about the gateway's validation and formats, which see the same items whatever produces them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import pytest
from fastapi.testclient import TestClient
from gateway_doubles import EMBEDDER, MODEL, default_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cocoon.gateway.api import ApiSettings, KeyStore, create_app

# --- response shapes (the spec's required fields and types) -------------------------------

NULLABLE_STRING = {"type": ["string", "null"]}
USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {k: {"type": "integer"} for k in ("prompt_tokens", "completion_tokens")},
}
ERROR_RESPONSE = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message", "param", "code"],
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "param": NULLABLE_STRING,
                "code": NULLABLE_STRING,
            },
        }
    },
}
CHAT_FINISH = ["stop", "length", "tool_calls", "content_filter", "function_call"]
TOOL_CALL = {
    "type": "object",
    "required": ["id", "type", "function"],
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name", "arguments"],
            "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
        },
    },
}


def _envelope(obj: str, choice: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": obj},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": choice},
            "usage": usage,
        },
    }


CHAT_COMPLETION = _envelope(
    "chat.completion",
    {
        "type": "object",
        "required": ["finish_reason", "index", "message", "logprobs"],
        "properties": {
            "finish_reason": {"enum": CHAT_FINISH},
            "index": {"type": "integer"},
            "message": {
                "type": "object",
                "required": ["role", "content", "refusal"],
                "properties": {
                    "role": {"const": "assistant"},
                    "content": NULLABLE_STRING,
                    "refusal": NULLABLE_STRING,
                    "tool_calls": {"type": "array", "items": TOOL_CALL},
                },
            },
        },
    },
    USAGE,
)
CHAT_CHUNK = _envelope(
    "chat.completion.chunk",
    {
        "type": "object",
        "required": ["delta", "finish_reason", "index"],
        "properties": {
            "finish_reason": {"enum": [*CHAT_FINISH, None]},
            "index": {"type": "integer"},
            "delta": {
                "type": "object",
                "properties": {
                    "content": NULLABLE_STRING,
                    "role": {"enum": ["developer", "system", "user", "assistant", "tool"]},
                    "tool_calls": {
                        "type": "array",
                        "items": {"type": "object", "required": ["index"]},
                    },
                },
            },
        },
    },
    {"anyOf": [USAGE, {"type": "null"}]},
)
COMPLETION_CHOICE = {
    "type": "object",
    "required": ["finish_reason", "index", "logprobs", "text"],
    "properties": {
        "index": {"type": "integer"},
        "text": {"type": "string"},
        "finish_reason": {"enum": ["stop", "length", "content_filter"]},
    },
}
COMPLETION = _envelope("text_completion", COMPLETION_CHOICE, USAGE)
# Streamed completion chunks are `CreateCompletionResponse`s too; the finish is null until the end.
COMPLETION_CHUNK = _envelope(
    "text_completion",
    {
        **COMPLETION_CHOICE,
        "properties": {
            **COMPLETION_CHOICE["properties"],
            "finish_reason": {"enum": ["stop", "length", "content_filter", None]},
        },
    },
    {"anyOf": [USAGE, {"type": "null"}]},
)
EMBEDDING_RESPONSE = {  # CreateEmbeddingResponse
    "type": "object",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"const": "list"},
        "model": {"type": "string"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "embedding", "object"],
                "properties": {
                    "index": {"type": "integer"},
                    "object": {"const": "embedding"},
                    # float: an array of numbers; base64: a string
                    "embedding": {
                        "anyOf": [
                            {"type": "array", "items": {"type": "number"}},
                            {"type": "string"},
                        ]
                    },
                },
            },
        },
        "usage": {
            "type": "object",
            "required": ["prompt_tokens", "total_tokens"],
            "properties": {k: {"type": "integer"} for k in ("prompt_tokens", "total_tokens")},
        },
    },
}
MODEL_OBJECT = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}
MODEL_LIST = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": MODEL_OBJECT}},
}

# --- request bodies the spec allows ------------------------------------------------------


def nullable(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


def optional_fields(**fields: st.SearchStrategy) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


INT64 = st.integers(-(2**63), 2**63 - 1)
# Any code point, lone surrogates included (JSON can carry them escaped).
text = st.text(st.characters(codec=None, categories=None), max_size=40)
model_id = st.sampled_from([MODEL, "nobody-attested", "unknown-model"]) | text
text_part = st.fixed_dictionaries({"type": st.just("text"), "text": text})
image_part = st.fixed_dictionaries(
    {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": text})}
)
parts = st.lists(text_part, min_size=1, max_size=3)
user_parts = st.lists(text_part | image_part, min_size=1, max_size=3)
function_name = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True) | text
tool_call = st.fixed_dictionaries(
    {
        "id": text,
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": function_name, "arguments": text}),
    }
)


def message(role: str, content: st.SearchStrategy, **extra: st.SearchStrategy):
    return st.fixed_dictionaries(
        {"role": st.just(role), "content": content}, optional={"name": text, **extra}
    )


messages = st.lists(
    st.one_of(
        message("developer", text | parts),
        message("system", text | parts),
        message("user", text | user_parts),
        st.fixed_dictionaries(
            {"role": st.just("assistant")},
            optional={
                "content": nullable(text | parts),
                "refusal": nullable(text),
                "name": text,
                "tool_calls": st.lists(tool_call, max_size=2),
            },
        ),
        st.fixed_dictionaries(
            {"role": st.just("tool"), "content": text | parts, "tool_call_id": text}
        ),
    ),
    min_size=1,
    max_size=4,
)
json_schema_object = st.sampled_from(
    [
        {"type": "object", "properties": {"a": {"type": "string"}}},
        {"type": "integer", "minimum": 3},
        {},
    ]
)
function = st.fixed_dictionaries(
    {"name": function_name},
    optional={
        "description": text,
        "parameters": json_schema_object,
        "strict": nullable(st.booleans()),
    },
)
tools = st.lists(
    st.fixed_dictionaries({"type": st.just("function"), "function": function}), max_size=3
)
tool_choice = st.sampled_from(["none", "auto", "required"]) | st.fixed_dictionaries(
    {"type": st.just("function"), "function": st.fixed_dictionaries({"name": function_name})}
)
response_format = st.one_of(
    st.just({"type": "text"}),
    st.just({"type": "json_object"}),
    st.fixed_dictionaries(
        {
            "type": st.just("json_schema"),
            "json_schema": st.fixed_dictionaries(
                {"name": function_name},
                optional={
                    "description": text,
                    "schema": json_schema_object,
                    "strict": nullable(st.booleans()),
                },
            ),
        }
    ),
)
stop = nullable(text | st.lists(text, min_size=1, max_size=4))
stream_options = nullable(
    optional_fields(include_usage=st.booleans(), include_obfuscation=st.booleans())
)
common = {
    "frequency_penalty": nullable(st.floats(-2, 2)),
    "presence_penalty": nullable(st.floats(-2, 2)),
    "temperature": nullable(st.floats(0, 2)),
    "top_p": nullable(st.floats(0, 1)),
    "n": nullable(st.integers(1, 128)),
    "seed": nullable(INT64),
    "stop": stop,
    "stream": nullable(st.booleans()),
    "stream_options": stream_options,
    "logit_bias": nullable(st.dictionaries(text, st.integers(-100, 100), max_size=2)),
    "user": text,
}
chat_bodies = st.fixed_dictionaries(
    {"model": model_id, "messages": messages},
    optional={
        **common,
        "max_tokens": nullable(st.integers(-5, 10_000)),
        "max_completion_tokens": nullable(st.integers(-5, 10_000)),
        "logprobs": nullable(st.booleans()),
        "top_logprobs": nullable(st.integers(0, 20)),
        "tools": tools,
        "tool_choice": tool_choice,
        "parallel_tool_calls": st.booleans(),
        "response_format": response_format,
        "reasoning_effort": nullable(
            st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh", "max"])
        ),
        "verbosity": nullable(st.sampled_from(["low", "medium", "high"])),
        "store": nullable(st.booleans()),
        "metadata": st.dictionaries(text, text, max_size=2),
        "service_tier": nullable(st.sampled_from(["auto", "default", "flex", "priority"])),
        "safety_identifier": nullable(text),
        "prompt_cache_key": nullable(text),
    },
)
completion_bodies = st.fixed_dictionaries(
    {
        "model": model_id,
        "prompt": st.one_of(
            st.none(),
            text,
            st.lists(text, max_size=3),
            st.lists(st.integers(0, 50_000), min_size=1, max_size=5),
            st.lists(st.lists(st.integers(0, 50_000), min_size=1, max_size=3), min_size=1),
        ),
    },
    optional={
        **common,
        "max_tokens": nullable(st.integers(0, 10_000)),
        "best_of": nullable(st.integers(0, 20)),
        "echo": nullable(st.booleans()),
        "logprobs": nullable(st.integers(0, 5)),
        "suffix": nullable(text),
    },
)

# What Cocoon serves (docs/api.md): within these, a request for an attested model is a 2xx.
plain_text = st.text(max_size=40)
# Served bodies carry text without lone surrogates (JSON can escape them, but they are no
# Unicode text: the gateway's JSON parser refuses them with a 400, like any invalid body).
served_text_part = st.fixed_dictionaries({"type": st.just("text"), "text": plain_text})
served_stop = nullable(plain_text | st.lists(plain_text, min_size=1, max_size=4))
served_messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "developer", "user", "assistant"]),
            "content": plain_text | st.lists(served_text_part, min_size=1, max_size=2),
        }
    ),
    min_size=1,
    max_size=3,
)


@st.composite
def served(draw: st.DrawFn, required: dict[str, st.SearchStrategy]) -> dict[str, Any]:
    body = draw(
        st.fixed_dictionaries(
            {"model": st.just(MODEL), **required},
            optional={
                key: common[key]
                for key in ("frequency_penalty", "presence_penalty", "temperature", "top_p")
            }
            | {"seed": INT64, "stop": served_stop, "user": plain_text, "n": st.just(1)},
        )
    )
    body["max_tokens"] = draw(st.integers(1, 4096))
    if draw(st.booleans()):
        body["stream"] = True
        body["stream_options"] = draw(stream_options)
    if draw(st.booleans()):  # log-probabilities, within OpenAI's ranges
        if "messages" in body:
            body["logprobs"] = True
            body["top_logprobs"] = draw(nullable(st.integers(0, 20)))
        else:
            body["logprobs"] = draw(st.integers(0, 5))
    return body


served_chat = served({"messages": served_messages})
served_completions = served({"prompt": plain_text | st.lists(plain_text, min_size=1, max_size=1)})

# --- mutations ---------------------------------------------------------------------------

any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def mutated(draw: st.DrawFn, bodies: st.SearchStrategy[dict[str, Any]]) -> Any:
    body = draw(bodies)
    kind = draw(st.sampled_from(["drop", "replace", "add", "nested", "not-an-object"]))
    keys = sorted(body)
    if kind == "drop":
        body.pop(draw(st.sampled_from(keys)))
    elif kind == "replace":
        body[draw(st.sampled_from(keys))] = draw(any_json)
    elif kind == "add":
        body[draw(text)] = draw(any_json)
    elif kind == "nested" and body.get("messages"):
        target = draw(st.sampled_from(body["messages"]))
        target[draw(st.sampled_from([*sorted(target), "content", "role", "x"]))] = draw(any_json)
    elif kind == "not-an-object":
        return draw(any_json)
    return body


# CreateEmbeddingRequest: input is a string, strings, a token array or token arrays (the spec
# caps them at 2048 items; its minimums are 1 item and, for strings, non-empty in practice).
token_array = st.lists(st.integers(0, 100_000), min_size=1, max_size=8)
embedding_input = (
    text
    | st.lists(text, min_size=1, max_size=4)
    | token_array
    | st.lists(token_array, min_size=1, max_size=4)
)
embedding_options = {
    "encoding_format": nullable(st.sampled_from(["float", "base64"])),
    "dimensions": nullable(st.integers(1, 4096)),
    "user": nullable(text),
}
embedding_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from([EMBEDDER, "nobody-attested", "unknown-model"]) | text,
        "input": embedding_input,
    },
    optional=embedding_options,
)
# What Cocoon serves: the embedding model, inputs that are not empty.
served_embeddings = st.fixed_dictionaries(
    {
        "model": st.just(EMBEDDER),
        "input": st.text(min_size=1, max_size=40)
        | st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=4)
        | token_array
        | st.lists(token_array, min_size=1, max_size=4),
    },
    optional={
        "encoding_format": nullable(st.sampled_from(["float", "base64"])),
        "dimensions": nullable(st.just(384)),  # the model's own; others: the engine's 400
        "user": nullable(plain_text),
    },
)


# --- the property ------------------------------------------------------------------------

CHAT = ("/v1/chat/completions", CHAT_COMPLETION, CHAT_CHUNK)
COMPLETIONS = ("/v1/completions", COMPLETION, COMPLETION_CHUNK)
EMBEDDINGS = ("/v1/embeddings", EMBEDDING_RESPONSE, None)  # never streamed


@pytest.fixture(scope="module")
def gateway() -> Iterator[TestClient]:
    keys = KeyStore()
    key = keys.create("acct-1", name="conformance")
    api = ApiSettings(rate_limit_per_second=1e9, rate_limit_burst=10**9)
    app = create_app(default_backend(), keys, api)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client


def assert_conforms(response: httpx.Response, shape: dict, chunk_shape: dict | None) -> None:
    status = response.status_code
    assert status < 500, f"{status}: {response.text}"
    if status >= 400:
        assert status < 500
        jsonschema.validate(response.json(), ERROR_RESPONSE)
        assert response.headers.get("x-request-id")
        return
    assert 200 <= status < 300, status
    if response.headers["content-type"].startswith("text/event-stream"):
        assert chunk_shape is not None
        events = [e.removeprefix("data: ") for e in response.text.strip().split("\n\n")]
        assert events[-1] == "[DONE]", events[-1]
        for event in events[:-1]:
            jsonschema.validate(json.loads(event), chunk_shape)
    else:
        jsonschema.validate(response.json(), shape)


def post(gateway: TestClient, path: str, body: Any) -> httpx.Response:
    return gateway.post(path, content=json.dumps(body).encode(), headers=JSON)


JSON = {"content-type": "application/json"}
EXAMPLES = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize(
    ("route", "bodies"),
    [(CHAT, chat_bodies), (COMPLETIONS, completion_bodies), (EMBEDDINGS, embedding_bodies)],
)
def test_bodies_the_spec_allows_get_a_conformant_answer(gateway, route, bodies):
    path, shape, chunk_shape = route

    @EXAMPLES
    @given(body=bodies)
    def check(body: dict[str, Any]) -> None:
        assert_conforms(post(gateway, path, body), shape, chunk_shape)

    check()


@pytest.mark.parametrize(
    ("route", "bodies"),
    [(CHAT, served_chat), (COMPLETIONS, served_completions), (EMBEDDINGS, served_embeddings)],
)
def test_bodies_cocoon_serves_are_answered(gateway, route, bodies):
    path, shape, chunk_shape = route

    @EXAMPLES
    @given(body=bodies)
    def check(body: dict[str, Any]) -> None:
        response = post(gateway, path, body)
        assert response.status_code == 200, response.text
        assert_conforms(response, shape, chunk_shape)

    check()


@pytest.mark.parametrize(
    ("route", "bodies"),
    [(CHAT, chat_bodies), (COMPLETIONS, completion_bodies), (EMBEDDINGS, embedding_bodies)],
)
def test_mutated_bodies_get_a_conformant_answer(gateway, route, bodies):
    path, shape, chunk_shape = route

    @EXAMPLES
    @given(body=mutated(bodies))
    def check(body: Any) -> None:
        assert_conforms(post(gateway, path, body), shape, chunk_shape)

    check()


@EXAMPLES
@given(raw=st.binary(max_size=200) | text.map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_bodies_that_are_not_json_are_4xx(gateway, raw):
    for path in (CHAT[0], COMPLETIONS[0], EMBEDDINGS[0]):
        response = gateway.post(path, content=raw, headers=JSON)
        assert 400 <= response.status_code < 500, response.text
        jsonschema.validate(response.json(), ERROR_RESPONSE)


# "." and ".." cannot name a model in a URL path: clients remove such dot-segments (RFC 3986),
# so `/v1/models/.` reaches the gateway as `/v1/models/`, the list.
model_ids = st.text(min_size=1, max_size=40).filter(lambda m: m not in (".", ".."))


@EXAMPLES
@given(model=st.sampled_from([MODEL, "nobody-attested"]) | model_ids)
def test_models_conform(gateway, model):
    listed = gateway.get("/v1/models")
    assert listed.status_code == 200
    jsonschema.validate(listed.json(), MODEL_LIST)
    one = gateway.get(f"/v1/models/{quote(model, safe='')}")
    assert_conforms(one, MODEL_OBJECT, None)
    assert one.status_code in (200, 404)
    assert (one.status_code == 200) == (model == MODEL)
