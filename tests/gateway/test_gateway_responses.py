"""`POST /v1/responses` with the official `openai` SDK, against the app on a loopback port.

The backend is the scripted stand-in for the network (gateway_doubles); tests/e2e runs the same
API against the real network and model. Every answer is checked with the SDK's own types
(`Response.model_validate`, the stream's event models), which validate rather than trust.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from gateway_doubles import MODEL, ScriptedBackend, default_backend, reply, serve
from openai.types.responses import Response

from cocoon.gateway.api import ApiSettings, ChatChunk, KeyStore, ToolCallDelta, Usage, create_app

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def calls_a_tool(_: Any) -> list:
    first = ToolCallDelta(index=0, id="call_1", name="get_weather", arguments='{"ci')
    return [
        ChatChunk(text="", tool_calls=(first,)),
        ChatChunk(text="", tool_calls=(ToolCallDelta(index=0, arguments='ty": "Paris"}'),)),
        ChatChunk(text="", finish_reason="tool_calls"),
        Usage(prompt_tokens=30, completion_tokens=9),
    ]


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[str, str, ScriptedBackend]]:
    backend, keys = default_backend(), KeyStore()
    backend.plans["tools"] = calls_a_tool
    backend.plans["short"] = lambda req: [
        ChatChunk(text="Hel"),
        ChatChunk(text="lo", finish_reason="length"),
        Usage(prompt_tokens=5, completion_tokens=2),
    ]
    backend.plans["echo"] = lambda req: reply("ok")
    key = keys.create("acct-responses")
    settings = ApiSettings(rate_limit_per_second=1000, rate_limit_burst=1000)
    with serve(create_app(backend, keys, settings)) as url:
        yield url, key, backend


@pytest.fixture
def sdk(live) -> openai.OpenAI:
    url, key, _ = live
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=10)


def test_a_text_answer_is_a_response_with_one_message(sdk: openai.OpenAI, live):
    response = sdk.responses.create(model=MODEL, input="Say hello", instructions="Be brief.")
    Response.model_validate(response.model_dump())
    assert response.status == "completed" and response.store is False
    assert response.output_text == "Hello from the enclave!"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (7, 3)
    _, request = live[2].submitted[-1]
    assert [m["role"] for m in request.body["messages"]] == ["system", "user"]  # instructions


def test_the_stream_has_the_responses_events_in_order(sdk: openai.OpenAI):
    events = list(sdk.responses.create(model=MODEL, input="Say hello", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    completed = events[-1].response
    assert deltas == completed.output_text == "Hello from the enclave!"
    assert completed.usage is not None and completed.usage.total_tokens == 10


def test_a_forced_function_call_and_its_output_in_the_next_turn(sdk: openai.OpenAI, live):
    choice = {"type": "function", "name": "get_weather"}
    response = sdk.responses.create(
        model="tools", input="Weather in Paris?", tools=[TOOL], tool_choice=choice
    )
    (call,) = response.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id == "call_1"
    _, request = live[2].submitted[-1]
    assert request.body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}

    # The next turn sends the call and its output back as input items (nothing is stored).
    follow = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C, sunny"},
    ]  # fmt: skip
    sdk.responses.create(model="echo", input=follow, tools=[TOOL])  # type: ignore[arg-type]
    _, request = live[2].submitted[-1]
    messages = request.body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"}


def test_streamed_function_call_arguments_concatenate(sdk: openai.OpenAI):
    events = list(sdk.responses.create(model="tools", input="x", tools=[TOOL], stream=True))
    pieces = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert pieces == done.arguments and json.loads(pieces) == {"city": "Paris"}
    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "function_call" and added.item.name == "get_weather"


def test_the_token_limit_makes_it_incomplete(sdk: openai.OpenAI):
    response = sdk.responses.create(model="short", input="x", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    events = list(sdk.responses.create(model="short", input="x", stream=True))
    assert events[-1].type == "response.incomplete"


def test_a_failure_after_the_start_ends_the_stream_with_response_failed(sdk: openai.OpenAI):
    events = list(sdk.responses.create(model="dies", input="x", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is not None
    assert events[-1].response.error.code == "worker_lost"


def test_json_schema_output_becomes_the_chat_response_format(sdk: openai.OpenAI, live):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    sdk.responses.create(model="echo", input="x", text={"format": fmt})  # type: ignore[typeddict-item]
    _, request = live[2].submitted[-1]
    assert request.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"background": True}, "background"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0]",
        ),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"temperature": 7}, "temperature"),
    ],
)
def test_what_cocoon_cannot_do_is_a_400_naming_the_parameter(live, extra, param):
    url, key, _ = live
    body = {"model": MODEL, "input": "x", **extra}
    answer = httpx.post(
        f"{url}/v1/responses", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_store_false_and_metadata_are_taken(sdk: openai.OpenAI):
    response = sdk.responses.create(model=MODEL, input="x", store=False, metadata={"k": "v"})
    assert response.store is False and response.metadata == {"k": "v"}
