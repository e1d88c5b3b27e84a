"""The local engine's adapter (engine_server + engine_compat) against the real engine and model.

Each test sends what llama-cpp-python alone refuses or answers wrongly, and checks the engine
now answers as OpenAI's API does (or refuses with a 400 in OpenAI's shape, never a 500).
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from cocoon.network.engine_compat import UnsupportedRequest, adapt_chat, check_enforceable

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


def _post(engine_url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{engine_url}{path}", json=body, timeout=300)


def _stream_events(engine_url: str, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{engine_url}{path}", json=body, timeout=300) as response:
        assert response.status_code == 200, response.read()
        data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_developer_role_and_text_parts_are_served(engine_url, engine_model):
    response = _post(
        engine_url,
        "/chat/completions",
        {
            "model": engine_model,
            "max_tokens": 8,
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "Answer briefly."}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hi"}],
                },
            ],
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


def test_the_rewrite_itself():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    person = {"name": "p", "schema": PERSON}
    body = adapt_chat(
        {
            "messages": [{"role": "developer", "content": "d"}, {"role": "user", "content": parts}],
            "response_format": {"type": "json_schema", "json_schema": person},
        }
    )
    assert body["messages"] == [
        {"role": "system", "content": "d"},
        {"role": "user", "content": "a\nb"},
    ]
    assert body["response_format"] == {"type": "json_object", "schema": PERSON}


@pytest.mark.parametrize("stream", [False, True])
def test_strict_json_schema_answers_validate(engine_url, engine_model, stream):
    body = {
        "model": engine_model,
        "max_tokens": 120,
        "temperature": 1.0,
        "seed": 7,
        "messages": [{"role": "user", "content": "Describe a person as JSON."}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "strict": True, "schema": PERSON},
        },
        "stream": stream,
    }
    if stream:
        events = _stream_events(engine_url, "/chat/completions", body)
        text = "".join(
            (c["choices"][0]["delta"].get("content") or "") for c in events if c["choices"]
        )
    else:
        response = _post(engine_url, "/chat/completions", body)
        assert response.status_code == 200, response.text
        text = response.json()["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.parametrize(
    ("schema", "strict", "says"),
    [
        ({"type": "integer", "minimum": 3}, True, "'minimum'"),
        ({"type": "string", "format": "email"}, True, "format 'email'"),
        ({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}, True,
         "'uniqueItems' at schema.properties.a"),
        ({"type": "object", "properties": {"a": {"not": {}}}}, False, "cannot turn the JSON"),
        ({"$ref": "https://example.com/schema.json"}, False, "cannot turn the JSON schema"),
    ],
)  # fmt: skip
def test_a_schema_the_grammar_cannot_enforce_is_a_400(
    engine_url, engine_model, schema, strict, says
):
    response = _post(
        engine_url,
        "/chat/completions",
        {
            "model": engine_model,
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "strict": strict, "schema": schema},
            },
        },
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and says in error["message"]
    assert error["param"] == "response_format.json_schema.schema"


def test_unenforced_keywords_pass_when_not_strict():
    check_enforceable({"type": "integer", "minimum": 3}, strict=False)
    with pytest.raises(UnsupportedRequest):
        check_enforceable({"type": "integer", "minimum": 3}, strict=True)


def test_the_engines_own_validation_errors_are_400_without_the_input(engine_url, engine_model):
    response = _post(
        engine_url,
        "/chat/completions",
        {"model": engine_model, "messages": [{"role": "wizard", "content": "secret prompt"}]},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"].startswith("messages")
    assert "secret prompt" not in response.text


def test_streamed_completion_echoes_the_prompt(engine_url, engine_model):
    prompt = "Once upon a time"
    body = {"model": engine_model, "prompt": prompt, "max_tokens": 6, "temperature": 0}
    events = _stream_events(
        engine_url, "/completions", {**body, "stream": True, "echo": True, "seed": 1}
    )
    streamed = "".join(c["choices"][0]["text"] for c in events if c["choices"])
    plain = _stream_events(engine_url, "/completions", {**body, "stream": True, "seed": 1})
    answer = "".join(c["choices"][0]["text"] for c in plain if c["choices"])
    assert streamed == prompt + answer


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}
WEATHER_CHOICE = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize("choice", [WEATHER_CHOICE, "required"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_tool_call_validates_against_its_schema(engine_url, engine_model, choice, stream):
    body = {
        "model": engine_model,
        "max_tokens": 60,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER],
        "tool_choice": choice,
        "stream": stream,
    }
    if stream:
        events = _stream_events(engine_url, "/chat/completions", body)
        deltas = [c["choices"][0]["delta"] for c in events if c["choices"]]
        calls = [call for d in deltas for call in d.get("tool_calls") or ()]
        assert {c["function"]["name"] for c in calls} == {"get_weather"}
        arguments = "".join(c["function"]["arguments"] for c in calls)
        finish = [c["choices"][0]["finish_reason"] for c in events if c["choices"]][-1]
    else:
        response = _post(engine_url, "/chat/completions", body)
        assert response.status_code == 200, response.text
        (call,) = response.json()["choices"][0]["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        arguments = call["function"]["arguments"]
        finish = response.json()["choices"][0]["finish_reason"]
    assert finish == "tool_calls"
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])


def test_tool_choices_this_engine_cannot_honour_are_400(engine_url, engine_model):
    body = {
        "model": engine_model,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "x"}],
        "tools": [WEATHER, CLOCK],
        "tool_choice": "required",
    }
    response = _post(engine_url, "/chat/completions", body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "tool_choice"


def test_auto_answers_in_text_and_a_past_call_is_part_of_the_conversation(engine_url, engine_model):
    arguments = '{"city": "Paris", "unit": "celsius"}'
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }
    response = _post(
        engine_url,
        "/chat/completions",
        {
            "model": engine_model,
            "max_tokens": 12,
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "21 degrees, sunny"},
            ],
            "tools": [WEATHER],
            "tool_choice": "auto",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


def _chat_logprobs_of(engine_url: str, body: dict, stream: bool) -> tuple[str, list[dict]]:
    """(content, logprobs entries) of a chat answer, joined over the chunks when streamed."""
    if not stream:
        response = _post(engine_url, "/chat/completions", body)
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        return choice["message"]["content"], choice["logprobs"]["content"]
    text, entries = "", []
    for event in _stream_events(engine_url, "/chat/completions", {**body, "stream": True}):
        for choice in event["choices"]:
            text += choice["delta"].get("content") or ""
            entries += (choice.get("logprobs") or {}).get("content") or []
    return text, entries


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("top", [None, 0, 3])
def test_chat_logprobs_are_openais_shape_and_spell_the_answer(
    engine_url, engine_model, stream, top
):
    body = {
        "model": engine_model,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": True,
    }
    if top is not None:
        body["top_logprobs"] = top
    text, entries = _chat_logprobs_of(engine_url, body, stream)
    assert text and "".join(e["token"] for e in entries) == text
    for entry in entries:
        assert entry["logprob"] <= 0 and entry["bytes"] == list(entry["token"].encode())
        alternatives = entry["top_logprobs"]
        # Exactly the `top` most likely (llama-cpp-python alone adds the chosen token).
        assert len(alternatives) == (top or 0)
        assert [a["logprob"] for a in alternatives] == sorted(
            (a["logprob"] for a in alternatives), reverse=True
        )
        assert all(a["bytes"] == list(a["token"].encode()) for a in alternatives)


def test_completion_logprobs_spell_the_answer(engine_url, engine_model):
    response = _post(
        engine_url,
        "/completions",
        {"model": engine_model, "prompt": "Red, green and", "max_tokens": 4, "logprobs": 2},
    )
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert len(logprobs["token_logprobs"]) == len(logprobs["tokens"])
    # The legacy shape: the most likely tokens and the chosen one, by text.
    assert all(2 <= len(top) <= 3 for top in logprobs["top_logprobs"])


def test_top_logprobs_without_logprobs_is_a_400_naming_it(engine_url, engine_model):
    response = _post(
        engine_url,
        "/chat/completions",
        {
            "model": engine_model,
            "max_tokens": 2,
            "messages": [{"role": "user", "content": "x"}],
            "top_logprobs": 2,
        },
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "top_logprobs"
