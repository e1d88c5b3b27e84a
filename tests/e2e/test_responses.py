"""The Responses API (`POST /v1/responses`) through the whole network, with the `openai` SDK.

On both paths (the `api` fixture): translated to a chat request by the gateway (gateway-sealed),
or on the developer's machine before sealing (client-sealed: the gateway relays ciphertext). The
real model answers; the SDK's own types validate every answer and event.
"""

from __future__ import annotations

import json

import jsonschema
from openai.types.responses import Response

from cocoon.network.engine_process import SMOLLM2_MODEL

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "days": {"type": "integer"},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather forecast for a city.",
    "parameters": WEATHER,
    "strict": True,
}


def test_a_text_answer_with_instructions_and_usage(api):
    response = api.sdk().responses.create(
        model=SMOLLM2_MODEL,
        instructions="You answer in one short sentence.",
        input="What is the capital of France?",
        max_output_tokens=24,
    )
    Response.model_validate(response.model_dump())
    assert response.status in ("completed", "incomplete") and response.store is False
    assert response.output_text.strip()
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.input_tokens > 0


def test_the_stream_carries_the_same_text_as_its_completed_response(api):
    events = list(
        api.sdk().responses.create(
            model=SMOLLM2_MODEL, input="Count from one to five.", max_output_tokens=24, stream=True
        )
    )
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas and deltas == final.output_text
    assert final.usage is not None and final.usage.output_tokens > 0


def test_a_forced_function_call_then_its_output_as_the_next_turn(api):
    sdk = api.sdk()
    question = {"role": "user", "content": "What will the weather be in Paris in 3 days?"}
    response = sdk.responses.create(
        model=SMOLLM2_MODEL,
        input=[question],
        tools=[TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=60,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER)

    # Nothing is stored: the next turn carries the call and its result as input items.
    call = calls[0]
    made = {"call_id": call.call_id, "name": call.name, "arguments": call.arguments}
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "18C, sunny"}
    follow = sdk.responses.create(
        model=SMOLLM2_MODEL,
        input=[question, {"type": "function_call", **made}, result],
        tools=[TOOL],
        tool_choice="none",
        max_output_tokens=24,
    )
    assert follow.output_text.strip()
    assert not [item for item in follow.output if item.type == "function_call"]
