"""Log-probabilities through the whole network with the official `openai` SDK, on both paths
(the `api` fixture): the engine's own, in OpenAI's shape, streamed and not, their tokens
spelling the answer."""

from __future__ import annotations

import pytest

from cocoon.network.engine_process import SMOLLM2_MODEL

CHAT = {
    "model": SMOLLM2_MODEL,
    "messages": [{"role": "user", "content": "Name two colours."}],
    "max_tokens": 8,
    "temperature": 0,
    "logprobs": True,
    "top_logprobs": 2,
}
COMPLETION = {
    "model": SMOLLM2_MODEL,
    "prompt": "Red, green and",
    "max_tokens": 6,
    "temperature": 0,
    "logprobs": 2,
}


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_spell_the_answer_with_the_top_alternatives(api, stream):
    sdk = api.sdk(max_retries=0)
    if stream:
        text, entries = "", []
        for chunk in sdk.chat.completions.create(**CHAT, stream=True):
            for choice in chunk.choices:
                text += choice.delta.content or ""
                entries += choice.logprobs.content if choice.logprobs else []
    else:
        choice = sdk.chat.completions.create(**CHAT).choices[0]
        text, entries = choice.message.content, choice.logprobs.content
    assert text and "".join(e.token for e in entries) == text
    for entry in entries:
        assert entry.logprob <= 0 and bytes(entry.bytes) == entry.token.encode()
        assert len(entry.top_logprobs) == 2
        # Most likely first. (Not necessarily the chosen token, even at temperature 0: the
        # values are the model's before sampling, and the engine's repetition penalty applies.)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob


@pytest.mark.parametrize("stream", [False, True])
def test_completion_logprobs_spell_the_answer(api, stream):
    sdk = api.sdk(max_retries=0)
    if stream:
        text, tokens, values = "", [], []
        for chunk in sdk.completions.create(**COMPLETION, stream=True):
            for choice in chunk.choices:
                text += choice.text
                if choice.logprobs:
                    tokens += choice.logprobs.tokens
                    values += choice.logprobs.token_logprobs
    else:
        choice = sdk.completions.create(**COMPLETION).choices[0]
        text, tokens, values = choice.text, choice.logprobs.tokens, choice.logprobs.token_logprobs
    assert text and "".join(tokens) == text
    assert len(values) == len(tokens) and all(v <= 0 for v in values)


def test_top_logprobs_without_logprobs_is_a_400_naming_it(api):
    # Refused by the gateway on its path; on the client's, by the worker's engine adapter.
    response = api.post("/chat/completions", {**CHAT, "logprobs": False})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "top_logprobs"
