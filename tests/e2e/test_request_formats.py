"""Request forms OpenAI's API allows, through the whole network with the official SDK.

Each was refused or failed somewhere in the network before (issue 15's defects): now each is
answered, or refused by the engine with a 400 the SDK does not retry. Every test runs on both
paths (the `api` fixture): sealed by the gateway, and sealed by the client's own proxy, where
the gateway never sees the body and only the worker can rewrite it for its engine.
"""

from __future__ import annotations

import json
import time

import jsonschema
import openai
import pytest

from cocoon.network.engine_process import SMOLLM2_MODEL

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_developer_role_and_text_parts_reach_the_model(api):
    answer = api.sdk(max_retries=0).chat.completions.create(
        model=SMOLLM2_MODEL,
        messages=[
            {"role": "developer", "content": "Answer in one word."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "yes."}],
            },
        ],
        max_tokens=8,
    )
    assert answer.choices[0].message.content.strip()
    assert answer.usage.prompt_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_strict_json_schema_answers_validate(api, stream):
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "strict": True, "schema": PERSON},
    }
    request = {
        "model": SMOLLM2_MODEL,
        "messages": [{"role": "user", "content": "A person as JSON."}],
        "max_tokens": 80,
        "response_format": response_format,
    }
    sdk = api.async_sdk()
    if stream:
        text = ""
        async for chunk in await sdk.chat.completions.create(**request, stream=True):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    else:
        answer = await sdk.chat.completions.create(**request)
        text = answer.choices[0].message.content
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_answers_are_json(api):
    answer = api.sdk().chat.completions.create(
        model=SMOLLM2_MODEL,
        messages=[{"role": "user", "content": 'Return {"answer": "yes"} as JSON.'}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(answer.choices[0].message.content), dict)


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_the_engine_refuses_is_a_400_not_a_lost_worker(api, stream):
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as refused:
        result = api.sdk().chat.completions.create(
            model=SMOLLM2_MODEL,
            messages=[{"role": "user", "content": "A number."}],
            max_tokens=8,
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "n",
                    "strict": True,
                    "schema": {"type": "integer", "minimum": 3},
                },
            },
            stream=stream,
        )
        for _ in result:  # a stream's error comes with the status line, before any chunk
            pass
    error = refused.value.body
    assert error["type"] == "invalid_request_error" and "'minimum'" in error["message"]
    assert error["param"] == "response_format.json_schema.schema"
    assert time.monotonic() - started < 30  # one attempt: a 400 is not retried


def test_a_price_cap_below_every_worker_is_refused_at_once(api):
    if api.sealed_by == "client":
        # The proxy verifies the workers' quotes once, on its first request: not this wait.
        api.sdk().completions.create(model=SMOLLM2_MODEL, prompt="hi", max_tokens=1)
    started = time.monotonic()
    response = api.post(
        "/chat/completions",
        {
            "model": SMOLLM2_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "max_coefficient": 1,
        },
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "max_coefficient_too_low" and error["param"] == "max_coefficient"
    assert "the lowest available is 1000" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    # Not the scheduler's no-worker wait (3 s in this network): refused as soon as it is placed.
    assert elapsed < 2.5, elapsed


@pytest.mark.parametrize("stream", [False, True])
def test_completions_echo_the_prompt(api, stream):
    prompt = "The capital of France is"
    request = {
        "model": SMOLLM2_MODEL,
        "prompt": prompt,
        "max_tokens": 5,
        "temperature": 0,
        "seed": 3,
    }
    sdk = api.sdk()
    plain = sdk.completions.create(**request).choices[0].text
    if stream:
        echoed = "".join(
            c.choices[0].text
            for c in sdk.completions.create(**request, echo=True, stream=True)
            if c.choices
        )
    else:
        echoed = sdk.completions.create(**request, echo=True).choices[0].text
    assert echoed == prompt + plain


def test_explicit_nulls_are_the_defaults(api):
    response = api.post(
        "/chat/completions",
        {
            "model": SMOLLM2_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "stream": None,
            "temperature": None,
            "stop": None,
            "stream_options": None,
            "top_p": None,
            "seed": None,
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] is not None
