"""A paced stand-in for the GPU engine, for measuring the path without the CPU model's load.

    .venv/bin/python bench/paced_engine.py --port 8100 [--ttft-ms 25] [--token-ms 15] [--slots 64]

Speaks the OpenAI HTTP API the worker-proxy uses (`GET /v1/models`, `POST /v1/chat/completions`,
streamed or not, with `stream_options.include_usage` and `continuous_usage_stats`), validates
what it receives like llama.cpp's server does (unknown model 404, bad body 400), and answers with
canned tokens on a fixed schedule: the first after `--ttft-ms`, then one every `--token-ms`.
Like llama.cpp's `llama-server --parallel N` it runs at most `--slots` streams at once (the
rest wait their turn) and says so at `GET /props` (`total_slots`), where the worker-proxy asks.
It sleeps instead of computing, so it leaves both cores to the network, as a GPU node's engine
would. Bench use only (bench/e2e_overhead.py --engine paced); the network and the tests run the
real llama.cpp engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status)


def build(model: str, ttft_s: float, token_s: float, slots: int = 64) -> Starlette:
    running = asyncio.Semaphore(slots)

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def props(_: Request) -> JSONResponse:
        return JSONResponse({"total_slots": slots, "model_path": model})

    async def chat(request: Request) -> JSONResponse | StreamingResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return error(400, "body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return error(400, "messages must be a list")
        if body.get("model") not in (None, model):
            return error(404, f"model {body.get('model')!r} not found")
        max_tokens = body.get("max_tokens") or 16
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return error(400, "max_tokens must be a positive integer")
        prompt = sum(
            len(str(m.get("content", ""))) for m in body["messages"] if isinstance(m, dict)
        )
        prompt_tokens = max(1, prompt // 4)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        options = body.get("stream_options") or {}

        def usage(completion: int) -> dict[str, Any]:
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            }

        def chunk(delta: dict, finish: str | None, completion: int) -> bytes:
            obj: dict[str, Any] = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if options.get("continuous_usage_stats"):
                obj["usage"] = usage(completion)
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        if not body.get("stream"):
            async with running:
                await asyncio.sleep(ttft_s + token_s * (max_tokens - 1))
            text = "".join(f"tok{i} " for i in range(max_tokens))
            message = {"role": "assistant", "content": text}
            return JSONResponse(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
                    "usage": usage(max_tokens),
                }
            )

        async def events():
            async with running:
                await asyncio.sleep(ttft_s)
                yield chunk({"role": "assistant", "content": ""}, None, 0)
                for i in range(max_tokens):
                    if i:
                        await asyncio.sleep(token_s)
                    yield chunk({"content": f"tok{i} "}, None, i + 1)
                yield chunk({}, "length", max_tokens)
            if options.get("include_usage"):
                final = {"id": rid, "object": "chat.completion.chunk", "created": created,
                         "model": model, "choices": [], "usage": usage(max_tokens)}  # fmt: skip
                yield b"data: " + json.dumps(final).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/props", props),
            Route("/v1/models", models),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--ttft-ms", type=float, default=25.0)
    parser.add_argument("--token-ms", type=float, default=15.0)
    parser.add_argument("--slots", type=int, default=64, help="streams served at once")
    args = parser.parse_args()
    app = build(args.model, args.ttft_ms / 1000, args.token_ms / 1000, args.slots)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
