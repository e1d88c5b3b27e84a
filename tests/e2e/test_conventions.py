"""What OpenAI clients rely on beyond the bodies, read off the wire of the real network on both
paths (the `api` fixture: sealed by the gateway, sealed by the client's proxy).

`x-request-id` on every answer, `x-should-retry: false` on quota errors, a stream's usage chunk
with empty `choices` (and `usage: null` on every other chunk), `finish_reason` exactly once,
`data: [DONE]` last, and `stream_options` refused without `stream`. (The streamed text is not
always the non-streamed one at temperature 0 with a seed: docs/api.md, "Streaming", says why.)
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from cocoon.network.engine_process import SMOLLM2_MODEL

ASK = {
    "model": SMOLLM2_MODEL,
    "messages": [{"role": "user", "content": "Name three colours."}],
    "max_tokens": 12,
    "temperature": 0,
    "seed": 7,
}


def sse_events(response: httpx.Response) -> list[str]:
    lines = response.text.splitlines()
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def test_a_stream_has_one_finish_a_usage_chunk_with_no_choices_then_done(api):
    response = api.post(
        "/chat/completions", {**ASK, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"]
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    *answer, usage = chunks
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    assert usage["usage"]["total_tokens"] == (
        usage["usage"]["prompt_tokens"] + usage["usage"]["completion_tokens"]
    )
    assert all(c["usage"] is None and len(c["choices"]) == 1 for c in answer)
    finishes = [c["choices"][0]["finish_reason"] for c in answer]
    assert [f for f in finishes if f is not None] == [finishes[-1]], finishes
    assert finishes[-1] in ("stop", "length")
    assert answer[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1


def test_stream_options_without_stream_is_a_400_naming_it(api):
    response = api.post("/chat/completions", {**ASK, "stream_options": {"include_usage": True}})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "stream_options"
    assert response.headers["x-request-id"]


def test_a_quota_error_says_not_to_retry(api, network, poor_account):
    account, _ = poor_account
    sdk = openai.OpenAI(base_url=api.base_url, api_key=network.api_keys[account], max_retries=0)
    with pytest.raises(openai.APIStatusError) as poor:
        sdk.chat.completions.create(**ASK)
    assert poor.value.status_code == 402
    assert poor.value.body["type"] == "insufficient_quota"
    assert poor.value.response.headers["x-should-retry"] == "false"
    assert poor.value.response.headers["x-request-id"]


def test_every_error_answer_names_its_request_and_a_405_its_methods(api):
    with httpx.Client(
        base_url=api.base_url, headers={"Authorization": f"Bearer {api.api_key}"}, timeout=60
    ) as http:
        answers = {
            "bad json": http.post("/chat/completions", content=b"{"),
            "unknown route": http.post("/nothing", json={}),
            "unknown model": http.get("/models/no-such-model"),
            "wrong method": http.get("/chat/completions"),
        }
    assert {name: a.status_code for name, a in answers.items()} == {
        "bad json": 400,
        "unknown route": 404,
        "unknown model": 404,
        "wrong method": 405,
    }
    for name, answer in answers.items():
        assert answer.headers.get("x-request-id"), name
        assert set(answer.json()["error"]) >= {"message", "type", "param", "code"}, name
    assert answers["wrong method"].headers["allow"] == "POST"
