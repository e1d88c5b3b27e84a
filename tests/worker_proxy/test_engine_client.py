"""The worker-proxy's engine client against the real engine (llama.cpp server, SmolLM2-135M).

The model is fluent but not factual: these tests check structure (text arrives, usage adds up,
connections close), never content.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from cocoon.network.engine_process import free_port
from cocoon.worker_proxy.chunks import engine_request
from cocoon.worker_proxy.engine import (
    EngineClient,
    EngineError,
    EngineTimeoutError,
    EngineUnavailableError,
    usage_of,
)

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


@pytest.fixture
async def client(engine_url):
    async with EngineClient(engine_url) as c:
        yield c


def chat_body(model: str, **extra) -> dict:
    return {"model": model, "messages": HELLO, "max_tokens": 16, "temperature": 0, **extra}


async def test_list_models(client, engine_model):
    assert await client.list_models() == [engine_model]


async def test_streaming_chat_returns_text_and_usage(client, engine_model):
    async with client.open_chat_stream(chat_body(engine_model)) as stream:
        chunks = [chunk async for chunk in stream]
    text = "".join(
        (choice.get("delta") or {}).get("content") or "" for c in chunks for choice in c["choices"]
    )
    assert text.strip()
    assert stream.done and stream.finish_reason in {"stop", "length"}
    # include_usage was forced: the last chunk is usage only.
    assert chunks[-1]["choices"] == [] and usage_of(chunks[-1]) == stream.usage
    usage = stream.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert 0 <= usage.cached_tokens <= usage.prompt_tokens and usage.reasoning_tokens == 0
    assert stream.first_token_at is not None and stream.first_token_at >= stream.started_at


async def test_stream_chat_generator_yields_parsed_chunks(client, engine_model):
    chunks = [c async for c in client.stream_chat(chat_body(engine_model))]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert usage_of(chunks[-1]) is not None


async def test_streamed_usage_matches_the_non_streaming_answer(client, engine_model):
    # min_tokens (vLLM and llama.cpp both accept it) pins the length, so the counts must agree.
    body = chat_body(engine_model, max_tokens=12, min_tokens=12)
    answer = await client.chat(body)
    async with client.open_chat_stream(body) as stream:
        async for _ in stream:
            pass
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"].strip()
    plain = usage_of(answer)
    assert plain is not None and plain.completion_tokens == 12
    assert stream.usage is not None
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (
        plain.prompt_tokens,
        plain.completion_tokens,
    )


async def test_repeated_prompt_reports_cached_tokens(client, engine_model):
    body = chat_body(engine_model, max_tokens=4)
    for _ in range(2):
        async with client.open_chat_stream(body) as stream:
            async for _ in stream:
                pass
    assert stream.usage is not None and stream.usage.cached_tokens > 0


async def test_completions_streaming_and_not(client, engine_model):
    body = {"model": engine_model, "prompt": "Once upon a time", "max_tokens": 8, "min_tokens": 8}
    answer = await client.completions(body)
    assert answer["choices"][0]["text"] and usage_of(answer).completion_tokens == 8
    async with client.open_completion_stream(body) as stream:
        texts = [c["choices"][0]["text"] async for c in stream if c["choices"]]
    assert "".join(texts) and stream.usage is not None and stream.usage.completion_tokens == 8


async def time_short_request(client: EngineClient, model: str) -> float:
    began = time.monotonic()
    await client.chat(chat_body(model, max_tokens=2))
    return time.monotonic() - began


@pytest.mark.parametrize("how", ["context_exit", "generator_aclose", "task_cancel"])
async def test_cancel_mid_stream_stops_generation(client, engine_model, how):
    # 1900 forced tokens take >12 s even at 150 tok/s; the engine runs one request at a time, so
    # a short request right after the cancel finishes fast only if the generation really stopped.
    long_body = chat_body(engine_model, max_tokens=1900, min_tokens=1900)
    if how == "context_exit":
        async with client.open_chat_stream(long_body) as stream:
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 5:
                    break
    elif how == "generator_aclose":
        gen = client.stream_chat(long_body)
        for _ in range(5):
            await anext(gen)
        await gen.aclose()
    else:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in client.stream_chat(long_body):
                started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await time_short_request(client, engine_model) < 6.0  # slack for a loaded CPU


async def test_engine_down_is_a_clear_error():
    async with EngineClient(f"http://127.0.0.1:{free_port()}/v1", connect_timeout=1) as c:
        with pytest.raises(EngineUnavailableError, match="unreachable"):
            await c.list_models()
        with pytest.raises(EngineUnavailableError):
            async with c.open_chat_stream({"model": "m", "messages": HELLO}) as stream:
                async for _ in stream:
                    pass


async def test_engine_refusal_carries_status_and_message(client, engine_model):
    with pytest.raises(EngineError) as refused:
        await client.chat({"model": engine_model, "messages": "not a list"})
    # The local engine's adapter answers its validation errors with 400 (llama-cpp-python
    # alone says 500); the error must carry the status and the engine's own explanation.
    assert refused.value.status == 400
    assert "Invalid value for 'messages'" in refused.value.reason
    assert refused.value.param == "messages"
    assert refused.value.reason in str(refused.value)
    with pytest.raises(EngineError) as refused_stream:
        async with client.open_chat_stream({"model": engine_model, "messages": 5}) as stream:
            async for _ in stream:
                pass
    assert refused_stream.value.status == 400 and "messages" in refused_stream.value.reason


async def test_silent_engine_times_out(engine_url, engine_model):
    async with EngineClient(engine_url, idle_timeout=0.1) as slow:
        with pytest.raises(EngineTimeoutError, match="timed out"):
            await slow.chat(chat_body(engine_model, max_tokens=40, min_tokens=40))


@pytest.mark.parametrize(
    "endpoint, body",
    [
        (
            "chat.completions",
            {"messages": HELLO, "temperature": None, "top_p": None, "stream": None},
        ),
        ("completions", {"prompt": "Hello", "echo": None, "temperature": None, "stop": None}),
    ],
)
async def test_explicit_nulls_a_client_sealed_body_may_carry_reach_the_engine_as_defaults(
    client, engine_model, endpoint, body
):
    # A client-sealed body reaches the worker as the client wrote it; OpenAI's specification
    # lets each optional parameter be null (its default), which llama-cpp-python refuses.
    request = engine_request(
        json.dumps({"model": "any", **body}).encode(), model=engine_model, max_tokens=4
    )
    opened = (
        client.open_chat_stream(request.body)
        if endpoint == "chat.completions"
        else client.open_completion_stream(request.body)
    )
    async with opened as stream:
        async for _ in stream:
            pass
    assert stream.usage is not None and stream.usage.completion_tokens > 0
