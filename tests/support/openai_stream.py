"""Reading a streamed chat completion from the official `openai` SDK as a client would."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def text_and_usage(stream: Iterable[Any]) -> tuple[str, Any]:
    """The streamed content joined, and the usage chunk (`stream_options.include_usage`) or
    None when none came."""
    text, usage = "", None
    for event in stream:
        if event.choices:
            text += event.choices[0].delta.content or ""
        usage = event.usage or usage
    return text, usage
