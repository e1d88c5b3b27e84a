"""Request bodies of `/v1/chat/completions` and `/v1/completions`: an allow-list, strictly typed.

Like COCOON's worker validation (`ValidateRequest.cpp`), anything not listed is refused, but
here at the gateway and as a 400 naming the parameter, not a 500 from deep in the network.
Beyond COCOON's list: `seed` and `user` for chat, and the Cocoon extensions `max_coefficient`
(price cap, 1000 = 1.0x) and `timeout` (seconds), which never reach the engine.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cocoon.gateway.api.backend import Endpoint, InferenceRequest
from cocoon.gateway.api.errors import InvalidRequest
from cocoon.gateway.api.settings import ApiSettings

# Strict: "1" is not an int and 1 is not a bool, as for OpenAI; unknown keys are refused.
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
_EXTENSIONS = {"max_coefficient", "timeout"}

Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(ge=0.0, le=1.0)]
TokenCount = Annotated[int, Field(ge=1)]
Stop = str | Annotated[list[str], Field(max_length=4)]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
User = Annotated[str, Field(max_length=256)]
# Only one choice per request: the engines we run return one, and the hold covers one.
OneChoice = Annotated[int, Field(ge=1, le=1)]
# Alternatives per token, as OpenAI allows: chat 0-20, completions (the legacy API) 0-5.
TopLogprobs = Annotated[int, Field(ge=0, le=20)]
CompletionLogprobs = Annotated[int, Field(ge=0, le=5)]


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


FunctionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class FunctionCall(BaseModel):
    model_config = _STRICT
    name: FunctionName
    arguments: str  # JSON text, as the model produced it


class ToolCall(BaseModel):
    model_config = _STRICT
    id: Annotated[str, Field(min_length=1, max_length=256)]
    type: Literal["function"]
    function: FunctionCall


class Message(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # Null only for an assistant message that made tool calls.
    content: str | list[TextPart] | None = None
    name: Annotated[str, Field(max_length=64)] | None = None
    tool_calls: list[ToolCall] | None = None  # assistant only
    tool_call_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None  # tool only

    @model_validator(mode="after")
    def _fields_fit_the_role(self) -> Message:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("tool messages, and only they, need tool_call_id")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required unless an assistant message has tool_calls")
        return self

    def text_length(self) -> int:
        calls = sum(len(c.function.arguments) for c in self.tool_calls or ())
        if self.content is None or isinstance(self.content, str):
            return len(self.content or "") + calls
        return sum(len(part.text) for part in self.content) + calls


class FunctionDefinition(BaseModel):
    model_config = _STRICT
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; none: no arguments
    strict: bool | None = None


class Tool(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = _STRICT
    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = _STRICT.copy() | {"populate_by_name": True}
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    # `schema` would shadow BaseModel.schema; the wire name is kept by the alias.
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given_for_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema' and only then")
        return self


class ChatTemplateKwargs(BaseModel):
    model_config = _STRICT
    enable_thinking: bool | None = None


class _Common(BaseModel):
    model_config = _STRICT
    model: Annotated[str, Field(min_length=1, max_length=256)]
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    max_tokens: TokenCount | None = None
    n: OneChoice | None = None
    seed: Seed | None = None
    stop: Stop | None = None
    # The specification allows an explicit null for every optional parameter: null = default.
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    user: User | None = None
    max_coefficient: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None


class ChatCompletionRequest(_Common):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: TokenCount | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    response_format: ResponseFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_needs_logprobs(cls, top: Any, info: ValidationInfo) -> Any:
        # `logprobs` is declared first, so it is validated (and in info.data) by now.
        if top is not None and info.data.get("logprobs") is not True:
            raise ValueError("top_logprobs needs logprobs to be true")
        return top

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_names_a_tool(cls, choice: Any, info: ValidationInfo) -> Any:
        # `tools` is declared first, so it is validated (and in info.data) by now.
        names = {tool.function.name for tool in info.data.get("tools") or ()}
        if choice in ("auto", "required") and not names:
            raise ValueError(f"tool_choice '{choice}' needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names '{choice.function.name}', which is not in tools")
        return choice


class CompletionRequest(_Common):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    best_of: OneChoice | None = None
    echo: bool | None = None
    logprobs: CompletionLogprobs | None = None
    suffix: str | None = None
    skip_special_tokens: bool | None = None


# OpenAI's limits: 2048 inputs per request; token ids are non-negative (the engine knows its
# vocabulary and refuses ids outside it).
MAX_EMBEDDING_INPUTS = 2048
_EmbeddingText = Annotated[str, Field(min_length=1)]
_TokenArray = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class EmbeddingRequest(BaseModel):
    model_config = _STRICT
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: (
        _EmbeddingText
        | Annotated[list[_EmbeddingText], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
        | _TokenArray
        | Annotated[list[_TokenArray], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: User | None = None
    max_coefficient: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None


_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Message,
    TextPart,
    StreamOptions,
    ResponseFormat,
    JsonSchemaFormat,
    FunctionCall,
    ToolCall,
    FunctionDefinition,
    Tool,
    NamedFunction,
    NamedToolChoice,
    ChatTemplateKwargs,
)
_FIELD_NAMES = {f.alias or name for m in _MODELS for name, f in m.model_fields.items()}


def _param(loc: tuple[int | str, ...], *, keep_last: bool = False) -> str | None:
    """`('messages', 0, 'content')` -> `messages[0].content`; drops pydantic's union tags.

    `keep_last` keeps the final name even if it is no field of ours (an unknown key).
    """
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _FIELD_NAMES or not out or (keep_last and i == len(loc) - 1):
            out += f".{part}" if out else part
    return out or None


def invalid_from_validation(error: ValidationError) -> InvalidRequest:
    """The first problem, worded like OpenAI's and naming the parameter."""
    first = error.errors(include_url=False)[0]
    kind = first["type"]
    param = _param(tuple(first["loc"]), keep_last=kind == "extra_forbidden")
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param)
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    if kind in ("json_invalid", "json_type", "model_type") and not first["loc"]:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param)


Parsed = ChatCompletionRequest | CompletionRequest | EmbeddingRequest
_REQUEST_MODELS: dict[Endpoint, type[Parsed]] = {
    "chat.completions": ChatCompletionRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
}


def parse_body(endpoint: Endpoint, raw: bytes) -> Parsed:
    model = _REQUEST_MODELS[endpoint]
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def prompt_chars(request: Parsed) -> int:
    if isinstance(request, ChatCompletionRequest):
        return sum(m.text_length() for m in request.messages)
    if isinstance(request, EmbeddingRequest):
        given = request.input
        if isinstance(given, str):
            return len(given)
        # A token counts as one character: a token is at least one character of text.
        return sum(len(item) for item in given if not isinstance(item, int)) or len(given)
    prompt = request.prompt
    return len(prompt) if isinstance(prompt, str) else sum(map(len, prompt))


def to_inference_request(
    endpoint: Endpoint,
    request: Parsed,
    settings: ApiSettings,
    request_id: str,
) -> InferenceRequest:
    """Apply the configured limits and defaults; build the engine-facing body. `request_id`
    is minted for the account (`cocoon.core.request_ids`): billing refuses any other."""
    prompt_param = {"chat.completions": "messages", "completions": "prompt"}.get(endpoint, "input")
    if (size := prompt_chars(request)) > settings.max_prompt_chars:
        raise InvalidRequest(
            f"The prompt is {size} characters long; this gateway accepts at most "
            f"{settings.max_prompt_chars}.",
            param=prompt_param,
            code="prompt_too_large",
        )
    if isinstance(request, EmbeddingRequest):
        return _embedding_request(request, settings, request_id)
    stream = bool(request.stream)
    if request.stream_options is not None and not stream:
        raise InvalidRequest(
            "stream_options is only allowed when stream is true.", param="stream_options"
        )
    # As in COCOON, max_completion_tokens wins over the older max_tokens.
    completion_cap = getattr(request, "max_completion_tokens", None)
    cap_param = "max_completion_tokens" if completion_cap is not None else "max_tokens"
    max_tokens = completion_cap or request.max_tokens or settings.default_max_tokens
    if max_tokens > settings.max_output_tokens:
        raise InvalidRequest(
            f"{cap_param} is {max_tokens}; this gateway allows at most "
            f"{settings.max_output_tokens}.",
            param=cap_param,
        )
    timeout = _timeout(request.timeout, settings)
    body = request.model_dump(
        by_alias=True,
        exclude_none=True,
        exclude={*_EXTENSIONS, "user", "max_completion_tokens", "stream_options"},
    )
    body.update(max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
    return InferenceRequest(
        request_id=request_id,
        endpoint=endpoint,
        model=request.model,
        body=body,
        max_tokens=max_tokens,
        max_coefficient=request.max_coefficient or settings.default_max_coefficient,
        timeout=timeout,
        stream=stream,
        prompt_bytes=len(json.dumps(body, separators=(",", ":")).encode()),
        user=request.user,
    )


def _timeout(asked: float | None, settings: ApiSettings) -> float:
    timeout = asked if asked is not None else settings.default_timeout
    if timeout > settings.max_timeout:
        raise InvalidRequest(
            f"timeout is {timeout} s; this gateway allows at most {settings.max_timeout} s.",
            param="timeout",
        )
    return timeout


# Nothing is generated for an embedding: the hold covers the input (its size bounds its tokens)
# and this one token, the least a request can hold for.
EMBEDDING_MAX_TOKENS = 1


def _embedding_request(
    request: EmbeddingRequest, settings: ApiSettings, request_id: str
) -> InferenceRequest:
    body = request.model_dump(exclude_none=True, exclude={*_EXTENSIONS, "user"})
    return InferenceRequest(
        request_id=request_id,
        endpoint="embeddings",
        model=request.model,
        body=body,
        max_tokens=EMBEDDING_MAX_TOKENS,
        max_coefficient=request.max_coefficient or settings.default_max_coefficient,
        timeout=_timeout(request.timeout, settings),
        stream=False,
        prompt_bytes=len(json.dumps(body, separators=(",", ":")).encode()),
        user=request.user,
    )
