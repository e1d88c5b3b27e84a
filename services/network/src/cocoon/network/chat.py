"""`cocoon chat "..."`: stream an answer from the local gateway to the terminal."""

from __future__ import annotations

import json
import sys

import httpx


class ChatError(RuntimeError):
    pass


def stream_chat(
    gateway_url: str, api_key: str, prompt: str, *, model: str, max_tokens: int, timeout: float
) -> dict | None:
    """Print the answer as it streams; return the usage object, raise ChatError on failure."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {api_key}"}
    usage = None
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream(
            "POST", f"{gateway_url}/v1/chat/completions", json=body, headers=headers
        ) as response,
    ):
        if response.status_code != 200:
            response.read()
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise ChatError(f"HTTP {response.status_code}: {message}")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise ChatError(chunk["error"].get("message", "stream failed"))
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                sys.stdout.write(text)
                sys.stdout.flush()
            usage = chunk.get("usage") or usage
    sys.stdout.write("\n")
    return usage
