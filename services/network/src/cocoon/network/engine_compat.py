"""What the local engine (llama-cpp-python's server) does not accept, rewritten into what it does.

vLLM and SGLang take these OpenAI request forms as they are; llama-cpp-python 0.3.36 refuses or
mis-renders them, so the local engine's adapter (`engine_server`) rewrites each request body
here before the server sees it. Nothing is dropped silently: a request this engine cannot
serve as asked raises `UnsupportedRequest`, which the adapter answers with a 400 naming the
parameter, as OpenAI would.

* `developer` messages become `system` messages (the role OpenAI introduced for o1 models
  with the same meaning; llama-cpp-python's request model has no such role).
* `content` given as a list of text parts becomes one string (the parts joined by a newline,
  as vLLM does): the model's chat template expects a string.
* `response_format: json_schema` becomes llama-cpp-python's `json_object` with a `schema`,
  which it enforces with a grammar built from the schema. A schema the grammar converter
  cannot compile, or (with `strict: true`) one using keywords it would silently not enforce,
  is refused instead of being answered unconstrained.
* `logprobs: true` without `top_logprobs` asks for `top_logprobs: 0` (llama-cpp-python returns
  no log-probabilities at all without it), and its answer's `logprobs` are put in OpenAI's shape
  by `chat_logprobs`.
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

# JSON Schema keywords llama.cpp's grammar converter (llama_cpp.llama_grammar.SchemaConverter)
# turns into grammar rules. Anything else it ignores: an answer could violate it.
ENFORCED_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "prefixItems",
        "minItems", "maxItems", "minLength", "maxLength", "pattern", "format", "enum",
        "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
        # Annotations: nothing to enforce.
        "title", "description", "examples", "default", "$schema", "$id", "$comment",
    }
)  # fmt: skip
# `format` values with a grammar rule (STRING_FORMAT_RULES and the uuid rule).
ENFORCED_FORMATS = frozenset(
    {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
)
# Keywords whose value is a schema or a list of schemas.
_SUBSCHEMAS = ("items", "prefixItems", "anyOf", "oneOf", "allOf", "additionalProperties")


class UnsupportedRequest(ValueError):
    """A request the local engine cannot serve as asked; the message says why."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def adapt_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat request rewritten for llama-cpp-python; raises UnsupportedRequest."""
    body = dict(body)
    messages = body.get("messages")
    if isinstance(messages, list):
        body["messages"] = [_message(m) for m in messages]
    if isinstance(fmt := body.get("response_format"), dict):
        body["response_format"] = _response_format(fmt)
    if body.get("logprobs") is not True and body.get("top_logprobs") is not None:
        # llama-cpp-python would answer without logprobs; OpenAI refuses it.
        raise UnsupportedRequest("top_logprobs needs logprobs to be true", "top_logprobs")
    if body.get("logprobs") is True and body.get("top_logprobs") is None:
        body["top_logprobs"] = 0
    _tools(body)
    return body


def chat_logprobs(logprobs: Any, top: int) -> Any:
    """A chat choice's `logprobs` from llama-cpp-python in OpenAI's shape.

    It lists, for each token, the `top` most likely alternatives *and* the chosen token (so one
    more when the chosen one is not among them, one when `top` is 0), and no `bytes`. OpenAI's
    `top_logprobs` are exactly the `top` most likely; `bytes` are the token's UTF-8 bytes.
    """
    if not isinstance(logprobs, dict) or not isinstance(logprobs.get("content"), list):
        return logprobs
    content = []
    for entry in logprobs["content"]:
        if not isinstance(entry, dict):
            continue
        alternatives = [a for a in entry.get("top_logprobs") or () if isinstance(a, dict)]
        alternatives.sort(key=lambda a: a.get("logprob", float("-inf")), reverse=True)
        content.append(
            {**_with_bytes(entry), "top_logprobs": [_with_bytes(a) for a in alternatives[:top]]}
        )
    return {**logprobs, "content": content}


def _with_bytes(entry: dict[str, Any]) -> dict[str, Any]:
    token = entry.get("token")
    return {**entry, "bytes": list(token.encode()) if isinstance(token, str) else None}


def _tools(body: dict[str, Any]) -> None:
    """Tool calling, as this engine does it: a forced call, constrained by a grammar.

    llama-cpp-python's default handler (the model's own chat template) generates a call to a
    *named* function with a grammar built from its parameters schema, streamed as OpenAI's
    tool-call deltas. It cannot let the model choose (`auto`) or choose among several
    (`required`): `auto` is answered in text (the model is free not to call a tool), `required`
    with one tool is that tool named, with several a 400.
    """
    tools = body.pop("tools", None)
    choice = body.pop("tool_choice", None)
    body.pop("parallel_tool_calls", None)  # one call per answer here, whatever is asked
    if not isinstance(tools, list) or not tools or choice in (None, "none", "auto"):
        return
    if choice == "required":
        if len(tools) != 1:
            raise UnsupportedRequest(
                "This engine can force a call only to one function: name it in tool_choice "
                "or send a single tool.",
                "tool_choice",
            )
        choice = {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
    name = choice["function"]["name"] if isinstance(choice, dict) else None
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name") == name:
            # The handler reads `parameters` unconditionally; none means no arguments.
            schema = function.get("parameters") or {"type": "object", "properties": {}}
            check_enforceable(
                schema,
                strict=function.get("strict") is True,
                param=f"tools[{i}].function.parameters",
            )
            body["tools"] = [{**tool, "function": {**function, "parameters": schema}}]
            body["tool_choice"] = choice
            return
    raise UnsupportedRequest(f"tool_choice names '{name}', which is not in tools", "tool_choice")


def _message(message: Any) -> Any:
    if not isinstance(message, dict):
        return message  # the server's own validation explains what is wrong
    message = dict(message)
    if message.get("role") == "developer":
        message["role"] = "system"
    content = message.get("content")
    if isinstance(content, list) and all(_is_text_part(p) for p in content):
        message["content"] = content = "\n".join(part["text"] for part in content)
    if message.get("role") == "assistant" and isinstance(
        calls := message.pop("tool_calls", None), list
    ):
        # The model's template has no place for earlier calls: show them as text, so the
        # conversation still reads call -> result to the model.
        shown = json.dumps([c.get("function") for c in calls if isinstance(c, dict)])
        message["content"] = f"{content}\n{shown}" if content else shown
    elif message.get("content") is None:
        message.pop("content", None)
    return message


def _is_text_part(part: Any) -> bool:
    return (
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
    )


def _response_format(fmt: dict[str, Any]) -> dict[str, Any]:
    if fmt.get("type") != "json_schema":
        return fmt
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise UnsupportedRequest(
            "response_format.json_schema must be an object with a 'schema' object.",
            "response_format.json_schema",
        )
    schema = spec.get("schema", {})
    check_enforceable(schema, strict=spec.get("strict") is True)
    return {"type": "json_object", "schema": schema}


def check_enforceable(schema: dict[str, Any], *, strict: bool, param: str | None = None) -> None:
    """Refuse a schema the engine's grammar cannot enforce (any keyword it ignores, if strict)."""
    param = param or "response_format.json_schema.schema"
    try:
        json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises ValueError, AssertionError, KeyError ...
        raise UnsupportedRequest(
            f"This engine cannot turn the JSON schema into a grammar: {exc}", param
        ) from None
    if strict and (problem := _unenforced(schema)) is not None:
        raise UnsupportedRequest(
            f"strict is true but this engine cannot enforce {problem}; remove it or set "
            "strict to false.",
            param,
        )


def _unenforced(schema: Any, path: str = "schema") -> str | None:
    """The first keyword under `schema` the grammar would not enforce, as 'keyword at path'."""
    if isinstance(schema, list):
        for i, sub in enumerate(schema):
            if (found := _unenforced(sub, f"{path}[{i}]")) is not None:
                return found
        return None
    if not isinstance(schema, dict):
        return None
    for key, value in schema.items():
        if key not in ENFORCED_KEYWORDS:
            return f"'{key}' at {path}"
        if key == "format" and value not in ENFORCED_FORMATS:
            return f"format '{value}' at {path}"
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                if (found := _unenforced(sub, f"{path}.{key}.{name}")) is not None:
                    return found
        elif key in _SUBSCHEMAS and (found := _unenforced(value, f"{path}.{key}")) is not None:
            return found
    return None
