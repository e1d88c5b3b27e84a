"""OpenAI's Responses API (`POST /v1/responses`) carried over chat completions.

`chat_request` turns a Responses request into the chat completion request the network serves;
`ResponseBuilder` turns the chat answer back into a Response object (`complete`) or into the
Responses stream's events (`start`, `on_chunk`, `finish`, `fail`). Both sides are plain JSON
dicts and the module needs nothing beyond the standard library, so the client proxy
(client-sealed path, where only the developer's machine sees the text) and the gateway
(gateway-sealed path; the one module of the client library it imports, tests/test_layering.py)
answer with this one translation.

Cocoon stores nothing: whatever needs a stored response or conversation (`store: true`,
`previous_response_id`, `conversation`, item references, `background`) is refused, naming the
parameter. A request is one chat turn: multi-turn context is sent as input items, as with
`store: false` at OpenAI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Cocoon's own request fields, passed through to the chat request (docs/api.md).
EXTENSIONS = ("max_coefficient", "timeout")
# Parameters taken, with their meaning here; anything else is refused by name.
_ACCEPTED = {
    "model",
    "input",
    "instructions",
    "stream",
    "stream_options",
    "max_output_tokens",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "store",
    "metadata",
    "user",
    "safety_identifier",
    "truncation",
    "service_tier",
    "include",
    "reasoning",
    "previous_response_id",
    "conversation",
    "background",
    "prompt",
    "prompt_cache_key",
    "top_logprobs",
    "max_tool_calls",
    *EXTENSIONS,
}
_NOTHING_STORED = "Cocoon stores no responses or conversations"


class ResponsesRequestError(ValueError):
    """A Responses request Cocoon cannot serve; `param` names the parameter (OpenAI's 400)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def _refuse(param: str, why: str) -> ResponsesRequestError:
    return ResponsesRequestError(f"'{param}' is not supported: {why}.", param)


def chat_request(body: Any) -> dict[str, Any]:
    """The chat completion request that answers the Responses request `body`."""
    if not isinstance(body, dict):
        raise ResponsesRequestError("The request body must be a JSON object.", None)
    for name in body:
        if name not in _ACCEPTED:
            raise ResponsesRequestError(f"Unrecognized request argument supplied: {name}", name)
    _check_unsupported(body)
    if "model" not in body:
        raise ResponsesRequestError("Missing required parameter: 'model'.", "model")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ResponsesRequestError("'instructions' must be a string.", "instructions")
        messages.append({"role": "system", "content": instructions})
    messages += _messages(body.get("input"))
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    for source, target in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("max_output_tokens", "max_completion_tokens"),
        ("user", "user"),
        *((name, name) for name in EXTENSIONS),
    ):
        if body.get(source) is not None:
            chat[target] = body[source]
    stream = body.get("stream")
    if stream is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # response.completed carries usage
    elif stream is not None:
        chat["stream"] = stream  # false, or a wrong type the chat validation names
    if body.get("tools"):
        chat["tools"] = [_tool(tool, i) for i, tool in enumerate(_list(body, "tools"))]
    if body.get("parallel_tool_calls") is not None:
        chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict) or set(text) - {"format", "verbosity"}:
            raise ResponsesRequestError("'text' takes 'format' and 'verbosity'.", "text")
        if text.get("format") is not None:
            chat["response_format"] = _response_format(text["format"])
        if text.get("verbosity") is not None:
            chat["verbosity"] = text["verbosity"]
    return chat


def _check_unsupported(body: dict[str, Any]) -> None:
    if body.get("store"):
        raise _refuse("store", f"{_NOTHING_STORED}; send store: false or leave it out")
    for name in ("previous_response_id", "conversation", "prompt"):
        if body.get(name) is not None:
            raise _refuse(name, f"{_NOTHING_STORED}; send the earlier turns as input items")
    if body.get("background"):
        raise _refuse("background", "responses are answered while the request is open")
    if body.get("include"):
        raise _refuse("include", "no extra output data (reasoning, logprobs, sources) is kept")
    if body.get("top_logprobs") is not None:
        raise _refuse("top_logprobs", "use /v1/chat/completions for log probabilities")
    if body.get("max_tool_calls") is not None:
        raise _refuse("max_tool_calls", "tool calls are made by the client, one turn at a time")
    reasoning = body.get("reasoning")
    if reasoning is not None and not (
        isinstance(reasoning, dict) and all(v is None for v in reasoning.values())
    ):
        raise _refuse("reasoning", "the served models have no reasoning settings")
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and len(metadata) <= 16
        and all(isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items())
    ):
        raise ResponsesRequestError(
            "'metadata' must map up to 16 keys (64 characters) to strings (512).", "metadata"
        )
    if body.get("truncation") not in (None, "disabled"):
        raise _refuse("truncation", "an input longer than the context is refused, not cut")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise _refuse("service_tier", "Cocoon has one tier")


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body[name]
    if not isinstance(value, list):
        raise ResponsesRequestError(f"'{name}' must be an array.", name)
    return value


def _messages(given: Any) -> list[dict[str, Any]]:
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        raise ResponsesRequestError("'input' must be a string or a non-empty array.", "input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(given):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise ResponsesRequestError(f"'{param}' must be an object.", param)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call":
            call = {
                "id": _string(item, "call_id", param),
                "type": "function",
                "function": {
                    "name": _string(item, "name", param),
                    "arguments": _string(item, "arguments", param),
                },
            }
            # Consecutive calls are one assistant turn, as the model made them.
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                raise ResponsesRequestError(f"'{param}.output' must be a string.", param)
            call_id = _string(item, "call_id", param)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "item_reference":
            raise _refuse(f"{param}.type", f"{_NOTHING_STORED} to refer to")
        else:
            raise _refuse(f"{param}.type", f"input items of type '{kind}'")
    return messages


def _string(item: dict[str, Any], name: str, param: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise ResponsesRequestError(f"'{param}.{name}' must be a string.", f"{param}.{name}")
    return value


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise ResponsesRequestError(
            f"'{param}.role' must be user, assistant, system or developer.", f"{param}.role"
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise ResponsesRequestError(f"'{param}.content' must be a string or an array.", param)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise _refuse(f"{param}.content[{j}]", f"content parts of type '{kind}' (text only)")
    return {"role": role, "content": "".join(texts)}


def _tool(tool: Any, index: int) -> dict[str, Any]:
    param = f"tools[{index}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise _refuse(f"{param}.type", f"tools of type '{kind}' (function tools only)")
    unknown = set(tool) - {"type", "name", "description", "parameters", "strict"}
    if unknown:
        raise ResponsesRequestError(f"Unrecognized tool field: {sorted(unknown)[0]}", param)
    function = {"name": tool.get("name")}
    for name in ("description", "parameters", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise _refuse("tool_choice", "choose 'none', 'auto', 'required' or a function")


def _response_format(fmt: Any) -> dict[str, Any]:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise _refuse("text.format", f"format '{kind}'")


def _usage(chat: dict[str, Any]) -> dict[str, Any]:
    prompt = chat.get("prompt_tokens_details") or {}
    completion = chat.get("completion_tokens_details") or {}
    return {
        "input_tokens": chat["prompt_tokens"],
        "input_tokens_details": {
            "cached_tokens": prompt.get("cached_tokens") or 0,
            "cache_write_tokens": 0,  # no prompt cache is written for a later request
        },
        "output_tokens": chat["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": completion.get("reasoning_tokens") or 0},
        "total_tokens": chat["total_tokens"],
    }


@dataclass
class ResponseBuilder:
    """One Response, built from the chat answer; `request` is the Responses body (echoed)."""

    response_id: str
    created_at: int
    request: dict[str, Any]
    output: list[dict[str, Any]] = field(default_factory=list)
    _sequence: int = 0
    _text_at: int | None = None  # output index of the message item
    _calls: dict[int, int] = field(default_factory=dict)  # chat call index -> output index
    _finish: str | None = None

    # -- the whole answer ---------------------------------------------------------------

    def complete(self, chat: dict[str, Any]) -> dict[str, Any]:
        """The Response for a non-streamed chat completion."""
        choice = chat["choices"][0]
        message = choice["message"]
        if message.get("content"):
            self._open_text()
            self._text_item()["content"][0]["text"] = message["content"]
        for i, call in enumerate(message.get("tool_calls") or []):
            self._open_call(i, call["id"], call["function"]["name"])
            self.output[self._calls[i]]["arguments"] = call["function"]["arguments"]
        self._finish = choice.get("finish_reason")
        for item in self.output:
            item["status"] = self._status()
        usage = chat.get("usage")
        return self.response(self._status(), _usage(usage) if usage else None)

    def response(self, status: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.request
        text = body.get("text") or {}
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body["model"],
            "output": [dict(item) for item in self.output],
            # null means the default, as for every optional parameter (the Response says a bool).
            "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": body.get("temperature"),
            "text": {"format": text.get("format") or {"type": "text"}},
            "tool_choice": body.get("tool_choice") or "auto",
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p"),
            "truncation": "disabled",
            "usage": usage,
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }

    def _status(self) -> str:
        return "incomplete" if self._finish == "length" else "completed"

    # -- the stream ----------------------------------------------------------------------

    def start(self) -> list[dict[str, Any]]:
        snapshot = self.response("in_progress")
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def on_chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of one chat completion chunk (a usage-only chunk has none)."""
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self._text_at is None:
                    events += self._open_text()
                item = self._text_item()
                item["content"][0]["text"] += delta["content"]
                events.append(
                    self._event(
                        "response.output_text.delta",
                        item_id=item["id"],
                        output_index=self._text_at,
                        content_index=0,
                        delta=delta["content"],
                        logprobs=[],
                    )
                )
            for call in delta.get("tool_calls") or []:
                index = call.get("index", 0)
                function = call.get("function") or {}
                if index not in self._calls:
                    events += self._open_call(index, call.get("id"), function.get("name") or "")
                item = self.output[self._calls[index]]
                if piece := function.get("arguments"):
                    item["arguments"] += piece
                    events.append(
                        self._event(
                            "response.function_call_arguments.delta",
                            item_id=item["id"],
                            output_index=self._calls[index],
                            delta=piece,
                        )
                    )
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
        return events

    def finish(self, usage: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Close every open item, then `response.completed` (or `.incomplete` at the token
        limit) with the whole Response; `usage` is the chat usage."""
        events: list[dict[str, Any]] = []
        status = self._status()
        for index, item in enumerate(self.output):
            item["status"] = status
            if item["type"] == "message":
                part = item["content"][0]
                common = {"item_id": item["id"], "output_index": index, "content_index": 0}
                done = self._event(
                    "response.output_text.done", **common, text=part["text"], logprobs=[]
                )
                events.append(done)
                events.append(self._event("response.content_part.done", **common, part=dict(part)))
            else:
                events.append(
                    self._event(
                        "response.function_call_arguments.done",
                        item_id=item["id"],
                        output_index=index,
                        arguments=item["arguments"],
                    )
                )
            events.append(self._event("response.output_item.done", output_index=index, item=item))
        whole = self.response(status, _usage(usage) if usage else None)
        events.append(self._event(f"response.{status}", response=whole))
        return events

    def fail(self, error: dict[str, Any]) -> list[dict[str, Any]]:
        """`response.failed` for a failure after the stream started (`error`: OpenAI's error
        object, with `code` and `message`)."""
        failed = self.response("failed")
        failed["error"] = {"code": error.get("code") or "server_error", "message": error["message"]}
        return [self._event("response.failed", response=failed)]

    # -- items ---------------------------------------------------------------------------

    def _text_item(self) -> dict[str, Any]:
        assert self._text_at is not None
        return self.output[self._text_at]

    def _open_text(self) -> list[dict[str, Any]]:
        self._text_at = len(self.output)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        item = {
            "id": f"msg_{self.response_id.removeprefix('resp_')}",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [part],
        }
        self.output.append(item)
        shown = {**item, "content": []}
        return [
            self._event("response.output_item.added", output_index=self._text_at, item=shown),
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=self._text_at,
                content_index=0,
                part=dict(part),
            ),
        ]

    def _open_call(self, index: int, call_id: str | None, name: str) -> list[dict[str, Any]]:
        at = len(self.output)
        self._calls[index] = at
        suffix = f"{self.response_id.removeprefix('resp_')}_{index}"
        item = {
            "id": f"fc_{suffix}",
            "type": "function_call",
            "call_id": call_id or f"call_{suffix}",
            "name": name,
            "arguments": "",
            "status": "in_progress",
        }
        self.output.append(item)
        return [self._event("response.output_item.added", output_index=at, item=dict(item))]

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        # Items and parts go into events as copies (`_open_text`, `_open_call`, `response`), so
        # the text appended later never rewrites an event already built; no copy here, per token.
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event


def sse_event(event: dict[str, Any]) -> bytes:
    """One Responses stream event as server-sent event bytes (named by its type)."""
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()
