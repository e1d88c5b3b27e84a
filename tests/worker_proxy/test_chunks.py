"""What the worker forwards of the engine's stream, and what it counts."""

from __future__ import annotations

from cocoon.worker_proxy.chunks import UsageMeter


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None):
    obj: dict = {"id": "c-1", "model": "m", "created": 1, "choices": []}
    if delta is not None or finish is not None:
        obj["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    if usage is not None:
        obj["usage"] = usage
    return obj


def test_a_role_only_opening_chunk_is_not_forwarded_anything_with_content_or_an_end_is():
    meter = UsageMeter()
    assert meter.observe(chunk({"role": "assistant", "content": ""})) is None
    assert meter.observe(chunk({"role": "assistant"})) is None
    first = chunk({"content": "Hi"})
    assert meter.observe(first) == first
    end = chunk({}, finish="stop")
    assert meter.observe(end) == end
    tool = chunk({"role": "assistant", "tool_calls": [{"index": 0}]})
    assert meter.observe(tool) == tool  # not only a role: forwarded
    assert meter.pieces == 1


def test_usage_is_taken_off_and_an_opening_chunk_with_usage_still_counts():
    meter = UsageMeter()
    opening = chunk({"role": "assistant", "content": ""}, usage={"prompt_tokens": 7})
    assert meter.observe(opening) is None
    assert meter.prompt_tokens == 7  # continuous usage stats on the role chunk are kept
    closing = chunk(usage={"prompt_tokens": 7, "completion_tokens": 3})
    assert meter.observe(closing) is None
    assert (meter.reported, meter.completion) == (True, 3)
    text = chunk({"content": "x"}, usage={"prompt_tokens": 7, "completion_tokens": 1})
    forwarded = meter.observe(text)
    assert forwarded is not None and "usage" not in forwarded
