"""Validation details and the OpenAI object formats, without HTTP."""

from __future__ import annotations

import json

import pytest

from cocoon.core.request_ids import new_request_id
from cocoon.gateway.api import ApiSettings, ChatChunk, InvalidRequest, Usage, WorkerLost
from cocoon.gateway.api.sse import SSE_DONE, ResponseFormatter, sse_error
from cocoon.gateway.api.validation import (
    ChatCompletionRequest,
    CompletionRequest,
    parse_body,
    to_inference_request,
)

RID = new_request_id("acct-1")


def _parse(endpoint, body: dict):
    return parse_body(endpoint, json.dumps(body).encode())


def test_content_parts_are_accepted_and_counted():
    req = _parse(
        "chat.completions",
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}]}],
        },
    )
    assert isinstance(req, ChatCompletionRequest)
    with pytest.raises(InvalidRequest) as caught:
        to_inference_request("chat.completions", req, ApiSettings(max_prompt_chars=3), RID)
    assert caught.value.code == "prompt_too_large"


def test_bad_content_part_names_the_parameter_without_union_noise():
    with pytest.raises(InvalidRequest) as caught:
        _parse(
            "chat.completions",
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        )
    assert caught.value.param.startswith("messages[0].content")
    assert "list[" not in caught.value.param


def test_completion_prompt_forms():
    assert isinstance(_parse("completions", {"model": "m", "prompt": ["one"]}), CompletionRequest)
    with pytest.raises(InvalidRequest):
        _parse("completions", {"model": "m", "prompt": ["one", "two"]})
    with pytest.raises(InvalidRequest) as caught:
        _parse("completions", {"model": "m", "prompt": "x", "tools": []})
    assert caught.value.param == "tools"


def test_defaults_apply():
    settings = ApiSettings(default_max_tokens=77, default_timeout=9, default_max_coefficient=3000)
    req = _parse("chat.completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    inference = to_inference_request("chat.completions", req, settings, RID)
    assert (inference.max_tokens, inference.timeout, inference.max_coefficient) == (77, 9, 3000)
    assert inference.body["max_tokens"] == 77
    assert inference.prompt_bytes == len(json.dumps(inference.body, separators=(",", ":")))
    assert inference.stream is False


def test_ints_are_accepted_where_floats_are_expected():
    req = _parse(
        "chat.completions",
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 1},
    )
    assert req.temperature == 1.0


def test_first_chat_delta_names_the_role_and_usage_is_null_until_the_end():
    fmt = ResponseFormatter("chat.completions", "chatcmpl-1", 5, "m", include_usage=True)
    first = fmt.chunk(ChatChunk(text="a"))
    second = fmt.chunk(ChatChunk(text="b", finish_reason="length"))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert second["choices"][0]["delta"] == {"content": "b"}
    assert second["choices"][0]["finish_reason"] == "length"
    assert first["usage"] is None
    usage = fmt.usage_chunk(Usage(3, 2, cached_tokens=1))
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 5
    assert usage["usage"]["prompt_tokens_details"] == {"cached_tokens": 1}


def test_usage_event_only_when_asked():
    fmt = ResponseFormatter("completions", "cmpl-1", 5, "m", include_usage=False)
    assert fmt.stream_event(Usage(1, 1)) == b""
    event = fmt.stream_event(ChatChunk(text="t"))
    assert event.startswith(b"data: {") and event.endswith(b"\n\n")
    assert json.loads(event[6:])["choices"][0]["text"] == "t"


def test_complete_joins_text_and_keeps_finish_reason():
    fmt = ResponseFormatter("chat.completions", "chatcmpl-1", 5, "m")
    body = fmt.complete(
        [ChatChunk(text="He"), ChatChunk(text="y", finish_reason="length"), Usage(2, 2)]
    )
    assert body["choices"][0]["message"]["content"] == "Hey"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2
    assert fmt.complete([ChatChunk(text="x")])["usage"] is None


def test_sse_error_and_done():
    assert SSE_DONE == b"data: [DONE]\n\n"
    event = sse_error(WorkerLost())
    assert json.loads(event.removeprefix(b"data: "))["error"]["code"] == "worker_lost"


def test_json_schema_format_needs_its_schema_object_and_keeps_the_wire_names():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "thing", "strict": True, "schema": schema},
    }
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": fmt}
    inference = to_inference_request(
        "chat.completions", _parse("chat.completions", body), ApiSettings(), RID
    )
    assert inference.body["response_format"] == fmt  # `schema`, not the model's `schema_`
    for bad, param in [
        ({"type": "json_schema"}, "response_format"),
        (
            {"type": "json_schema", "json_schema": {"schema": schema}},
            "response_format.json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a b"}},
            "response_format.json_schema.name",
        ),
        ({"type": "text", "json_schema": {"name": "a"}}, "response_format"),
    ]:
        with pytest.raises(InvalidRequest) as caught:
            _parse("chat.completions", {**body, "response_format": bad})
        assert caught.value.param == param


def test_tool_call_deltas_take_openais_shape_and_join_into_the_message():
    from cocoon.gateway.api import ToolCallDelta
    from cocoon.gateway.pipeline import parse_engine_chunk

    # llama-cpp-python repeats id and name on every delta; clients concatenate what they get.
    def engine_delta(arguments: str) -> bytes:
        call = {"index": 0, "id": "call_x", "type": "function",
                "function": {"name": "get_weather", "arguments": arguments}}  # fmt: skip
        delta = {"role": None, "content": None, "tool_calls": [call]}
        return json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode()

    items = [*parse_engine_chunk(engine_delta('{"city": '), "chat.completions")]
    items += parse_engine_chunk(engine_delta('"Paris"}'), "chat.completions")
    items.append(ChatChunk(finish_reason="tool_calls"))
    assert items[0].tool_calls == (ToolCallDelta(0, "call_x", "get_weather", '{"city": '),)
    fmt = ResponseFormatter("chat.completions", "chatcmpl-1", 5, "m")
    first, second = (fmt.chunk(i)["choices"][0]["delta"] for i in items[:2])
    assert first == {
        "role": "assistant",
        "tool_calls": [{"index": 0, "id": "call_x", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": '}}],
    }  # fmt: skip
    assert second == {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}
    message = fmt.complete(items)["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["content"] is None
    assert message["message"]["tool_calls"] == [
        {"id": "call_x", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]  # fmt: skip


def test_a_sealed_engine_refusal_is_a_400_and_anything_else_a_lost_worker():
    from cocoon.gateway.pipeline import worker_error

    refused = json.dumps(
        {"error": {"type": "invalid_request_error", "message": "bad schema", "param": "p.q"}}
    )
    error = worker_error(refused.encode(), "engine_rejected")
    assert isinstance(error, InvalidRequest) and error.message == "bad schema"
    assert error.param == "p.q"  # the parameter the engine named
    for plain in (b'{"error": {"code": "engine_error", "message": "x"}}', b"not json", b"[]"):
        assert isinstance(worker_error(plain, "engine_error"), WorkerLost)


def _entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}


def test_logprobs_pass_through_each_chunk_and_join_per_choice():
    from cocoon.gateway.pipeline import parse_engine_chunk

    def engine_piece(token: str, logprob: float, finish: str | None = None) -> bytes:
        choice = {
            "index": 0,
            "delta": {"content": token},
            "logprobs": {"content": [_entry(token, logprob)], "refusal": None},
            "finish_reason": finish,
        }
        return json.dumps({"choices": [choice]}).encode()

    items = [
        *parse_engine_chunk(engine_piece("Hel", -0.5), "chat.completions"),
        *parse_engine_chunk(engine_piece("lo", -0.25, "stop"), "chat.completions"),
    ]
    fmt = ResponseFormatter("chat.completions", "chatcmpl-1", 5, "m")
    streamed = [json.loads(fmt.stream_event(item)[6:]) for item in items]
    assert [c["choices"][0]["logprobs"]["content"][0]["token"] for c in streamed] == ["Hel", "lo"]
    whole = ResponseFormatter("chat.completions", "chatcmpl-1", 5, "m").complete(items)
    choice = whole["choices"][0]
    assert choice["message"]["content"] == "Hello"
    assert choice["logprobs"] == {
        "content": [_entry("Hel", -0.5), _entry("lo", -0.25)],
        "refusal": None,
    }

    pieces = [
        {"tokens": [" a"], "token_logprobs": [-1.0], "top_logprobs": [{" a": -1.0}]},
        {"tokens": [" b"], "token_logprobs": [-2.0], "top_logprobs": [{" b": -2.0}]},
    ]
    text_items = [ChatChunk(text=p["tokens"][0], logprobs=p) for p in pieces]
    joined = ResponseFormatter("completions", "cmpl-1", 5, "m").complete(text_items)
    assert joined["choices"][0]["logprobs"] == {
        "tokens": [" a", " b"],
        "token_logprobs": [-1.0, -2.0],
        "top_logprobs": [{" a": -1.0}, {" b": -2.0}],
    }


def test_a_choice_without_logprobs_says_null():
    whole = ResponseFormatter("chat.completions", "chatcmpl-1", 5, "m").complete(
        [ChatChunk(text="hi", finish_reason="stop")]
    )
    assert whole["choices"][0]["logprobs"] is None


@pytest.mark.parametrize(
    ("endpoint", "extra", "param"),
    [
        ("chat.completions", {"top_logprobs": 2}, "top_logprobs"),
        ("chat.completions", {"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ("chat.completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("chat.completions", {"logprobs": 1}, "logprobs"),
        ("completions", {"logprobs": 6}, "logprobs"),
        ("completions", {"logprobs": True}, "logprobs"),
    ],
)
def test_logprobs_out_of_openais_ranges_are_refused_naming_them(endpoint, extra, param):
    base = (
        {"messages": [{"role": "user", "content": "x"}]}
        if endpoint == "chat.completions"
        else {"prompt": "x"}
    )
    with pytest.raises(InvalidRequest) as refused:
        _parse(endpoint, {"model": "m", **base, **extra})
    assert refused.value.param == param


def test_logprobs_within_range_reach_the_engine():
    chat = _parse(
        "chat.completions",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "logprobs": True,
            "top_logprobs": 20,
        },
    )
    body = to_inference_request("chat.completions", chat, ApiSettings(), RID).body
    assert (body["logprobs"], body["top_logprobs"]) == (True, 20)
    text = _parse("completions", {"model": "m", "prompt": "x", "logprobs": 0})
    assert to_inference_request("completions", text, ApiSettings(), RID).body["logprobs"] == 0


@pytest.mark.parametrize("code", ["engine_rejected", "engine_error"])
async def test_an_engine_refusal_outcome_read_before_its_chunk_waits_for_the_chunk(code):
    """The worker seals the engine's reason into its final chunk, then reports the outcome; the
    gateway may read the outcome first (two topics). A refusal must then wait for the chunk
    (its 400), while any other failure is a lost worker at once."""
    from cocoon.gateway.pipeline import KafkaBackend, _InFlight

    messages = [{"role": "user", "content": "x"}]
    chat = _parse("chat.completions", {"model": "m", "messages": messages})
    state = _InFlight(to_inference_request("chat.completions", chat, ApiSettings(), RID), attempt=1)
    outcome = {"attempt": 1, "status": "FAILED", "error_code": code}
    if code == "engine_rejected":
        assert KafkaBackend._on_outcome(state, outcome) is None
    else:
        with pytest.raises(WorkerLost):
            KafkaBackend._on_outcome(state, outcome)


def test_a_coalesced_record_gives_every_chunk_in_order():
    from cocoon.gateway.pipeline import parse_engine_chunk

    def content(text: str, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        return json.dumps({"choices": [choice]}, separators=(",", ":")).encode()

    # The worker joins the chunks the engine produced within its linger with newlines; a text
    # that holds a newline is escaped inside its JSON document, so it never splits one.
    record = b"\n".join([content("Hello"), content(",\nworld"), content("!", "stop")])
    items = parse_engine_chunk(record, "chat.completions")
    assert [(i.text, i.finish_reason) for i in items if isinstance(i, ChatChunk)] == [
        ("Hello", None),
        (",\nworld", None),
        ("!", "stop"),
    ]
