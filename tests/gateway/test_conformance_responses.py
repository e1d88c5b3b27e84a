"""`POST /v1/responses` against OpenAI's description of it, with generated request bodies.

Bodies are drawn with hypothesis from the parameters of the specification's `CreateResponse`
(what it allows, including what Cocoon refuses), then mutated (a key dropped or replaced by any
JSON, an unknown key, not an object). The property: a 2xx whose body validates as the SDK's
`Response` (generated from the same specification), or whose every SSE event validates as a
`ResponseStreamEvent`; or a 4xx in the specification's error shape; never a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from gateway_doubles import MODEL, default_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from cocoon.gateway.api import ApiSettings, KeyStore, create_app

EVENT = TypeAdapter(ResponseStreamEvent)
ERROR_KEYS = {"message", "type", "param", "code"}
EXAMPLES = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

text = st.text(max_size=12)
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
input_text = st.fixed_dictionaries({"type": st.just("input_text"), "text": text})
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "developer"]),
        "content": text | st.lists(input_text, min_size=1, max_size=2),
    },
    optional={"type": st.just("message")},
)
call = st.fixed_dictionaries(
    {
        "type": st.just("function_call"),
        "call_id": text,
        "name": st.just("f"),
        "arguments": st.just("{}"),
    }
)
call_output = st.fixed_dictionaries(
    {"type": st.just("function_call_output"), "call_id": text, "output": text}
)
other_items = st.fixed_dictionaries(
    {"type": st.sampled_from(["item_reference", "reasoning", "file_search_call"]), "id": text}
)
function_tool = st.fixed_dictionaries(
    {"type": st.just("function"), "name": st.just("f")},
    optional={
        "description": text,
        "parameters": st.just({"type": "object", "properties": {}}),
        "strict": st.booleans(),
    },
)
other_tool = st.fixed_dictionaries({"type": st.sampled_from(["web_search", "file_search"])})
formats = st.sampled_from(
    [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": True},
    ]
)
spec_bodies = st.fixed_dictionaries(
    {"model": st.just(MODEL) | text},
    optional={
        "input": text | st.lists(message | call | call_output | other_items, max_size=3),
        "instructions": st.none() | text,
        "stream": st.none() | st.booleans(),
        "max_output_tokens": st.none() | st.integers(-1, 5000),
        "temperature": st.none() | st.floats(0, 2),
        "top_p": st.none() | st.floats(0, 1),
        "tools": st.lists(function_tool | other_tool, max_size=2),
        "tool_choice": st.sampled_from(["none", "auto", "required"])
        | st.just({"type": "function", "name": "f"}),
        "parallel_tool_calls": st.none() | st.booleans(),
        "text": st.fixed_dictionaries({"format": formats}),
        "store": st.none() | st.booleans(),
        "metadata": st.dictionaries(st.text(min_size=1, max_size=8), text, max_size=2),
        "user": text,
        "previous_response_id": st.none() | text,
        "background": st.none() | st.booleans(),
        "truncation": st.sampled_from(["auto", "disabled"]),
        "include": st.lists(st.just("message.output_text.logprobs"), max_size=1),
        "reasoning": st.just({"effort": "low"}) | st.none(),
        "service_tier": st.sampled_from(["auto", "default", "flex", "priority"]),
        "top_logprobs": st.none() | st.integers(0, 20),
    },
)


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    body = draw(spec_bodies)
    kind = draw(st.sampled_from(["drop", "replace", "add", "not-an-object"]))
    if kind == "drop":
        body.pop(draw(st.sampled_from(sorted(body))))
    elif kind == "replace":
        body[draw(st.sampled_from(sorted(body)))] = draw(any_json)
    elif kind == "add":
        body[draw(text)] = draw(any_json)
    else:
        return draw(any_json)
    return body


@pytest.fixture(scope="module")
def gateway() -> Iterator[TestClient]:
    keys = KeyStore()
    key = keys.create("acct-1", name="conformance")
    api = ApiSettings(rate_limit_per_second=1e9, rate_limit_burst=10**9)
    with TestClient(create_app(default_backend(), keys, api), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


def assert_conforms(gateway: TestClient, body: Any) -> int:
    response = gateway.post("/v1/responses", content=json.dumps(body).encode())
    status = response.status_code
    assert status < 500, f"{status}: {response.text}"
    if status >= 400:
        assert set(response.json()["error"]) == ERROR_KEYS
        return status
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [e for e in response.text.split("\n\n") if e.strip()]
        for event in events:
            name, data = event.split("\n", 1)
            parsed = EVENT.validate_python(json.loads(data.removeprefix("data: ")))
            assert name == f"event: {parsed.type}"
        assert parsed.type in ("response.completed", "response.incomplete", "response.failed")
    else:
        Response.model_validate(response.json())
    return status


@EXAMPLES
@given(body=spec_bodies)
def test_bodies_the_spec_allows_get_a_conformant_answer(gateway, body):
    assert_conforms(gateway, body)


@EXAMPLES
@given(body=mutated())
def test_mutated_bodies_get_a_conformant_answer(gateway, body):
    assert_conforms(gateway, body)


@EXAMPLES
@given(
    body=st.fixed_dictionaries(
        {"model": st.just(MODEL), "input": text.filter(str.strip) | st.lists(message, min_size=1)},
        optional={"instructions": text, "stream": st.booleans(), "store": st.just(False)},
    )
)
def test_bodies_cocoon_serves_are_answered(gateway, body):
    assert assert_conforms(gateway, body) == 200
