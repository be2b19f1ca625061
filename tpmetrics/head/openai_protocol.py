"""Request and response bodies of the OpenAI-compatible `/v1/completions` and `/v1/models`.

The shapes follow OpenAI's legacy Completions API. The server decodes
greedily, so `temperature` is validated for compatibility and then ignored. Fields that this
server does not implement are accepted and listed in
`CompletionRequest.unsupported_fields`, so that the route can log them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationInfo, field_validator

SSE_DONE = "data: [DONE]\n\n"

FinishReason = Literal["stop", "length", "abort", "error"]
TokenIds = list[NonNegativeInt]

_PROMPT_SHAPES = (
    "expected a non-empty string, a non-empty list of token ids (integers >= 0), "
    "or a non-empty batch of either"
)


class StreamOptions(BaseModel):
    """Options of a streamed completion."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class CompletionRequest(BaseModel):
    """Body of `POST /v1/completions`.

    `prompt` is one prompt (text or token ids) or a batch of them (a list of
    texts or a list of token id lists). `ignore_eos` makes the engine generate
    exactly `max_tokens` tokens unless the context length ends the request.
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    prompt: str | TokenIds | list[str] | list[TokenIds]
    max_tokens: int = Field(default=16, ge=1)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt_shape(cls, prompt: object) -> object:
        if isinstance(prompt, str) and prompt:
            return prompt
        if not isinstance(prompt, list) or not prompt:
            raise ValueError(_PROMPT_SHAPES)
        if _is_token_ids(prompt) or all(isinstance(item, str) and item for item in prompt):
            return prompt
        if all(isinstance(item, list) and item and _is_token_ids(item) for item in prompt):
            return prompt
        raise ValueError(_PROMPT_SHAPES)

    @field_validator("stream_options")
    @classmethod
    def _check_stream_is_set(
        cls, stream_options: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if stream_options is not None and not info.data.get("stream", False):
            raise ValueError("only allowed when stream is true: set stream to true")
        return stream_options

    @property
    def prompts(self) -> list[str] | list[list[int]]:
        """The prompts of the request as a batch: one item per prompt."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt[0], int):
            return [[int(token_id) for token_id in prompt]]
        return prompt

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a chunk that carries `usage`."""
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def unsupported_fields(self) -> list[str]:
        """Names of request fields that this server accepts but does not implement."""
        return sorted(self.model_extra or {})


class CompletionChoice(BaseModel):
    """One generated sequence, or in a stream chunk, the text of one step of it."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class Usage(BaseModel):
    """Token counts of a whole request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def from_counts(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        """Build the usage with `total_tokens` as the sum of the two counts."""
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class CompletionResponse(BaseModel):
    """Body of a non-streamed completion, and of each chunk of a streamed one.

    In a stream, chunks with text carry `usage: null`, and when the request set
    `stream_options.include_usage`, a last chunk carries `choices: []` and the usage.
    """

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """One served model in `GET /v1/models`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tpmetrics"


class ModelList(BaseModel):
    """Body of `GET /v1/models`."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    """The `error` object of an OpenAI error response."""

    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Body of an error response: `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorDetail


def new_completion_id() -> str:
    """Return a fresh completion id of the form `cmpl-<32 hex digits>`."""
    return f"cmpl-{uuid.uuid4().hex}"


def unix_time() -> int:
    """Return the current time in whole seconds since the epoch, as `created` fields use."""
    return int(time.time())


def sse_event(body: BaseModel) -> str:
    """Encode `body` as one server-sent event: `data: {...}` and a blank line."""
    return f"data: {body.model_dump_json()}\n\n"


def invalid_request(message: str, param: str | None = None) -> ErrorResponse:
    """Build an `invalid_request_error` response body."""
    return ErrorResponse(error=ErrorDetail(message=message, param=param))


def validation_error_response(errors: Sequence[Mapping[str, Any]]) -> ErrorResponse:
    """Build an error response from pydantic's or FastAPI's list of validation errors.

    The message lists every error as `location: message`, and `param` names the
    top-level field of the first error. A leading `body` location is dropped,
    as FastAPI adds it to fields of the request body.
    """
    if not errors:
        return invalid_request("invalid request")
    body_error = _body_error(errors[0])
    if body_error is not None:
        return invalid_request(body_error)
    parts = []
    for error in errors:
        location = _field_location(error.get("loc", ()))
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{'.'.join(location)}: {message}" if location else message)
    first_location = _field_location(errors[0].get("loc", ()))
    param = first_location[0] if first_location else None
    return invalid_request("; ".join(parts), param)


def _body_error(error: Mapping[str, Any]) -> str | None:
    """Describe an error about the body as a whole (not JSON, not an object), else None."""
    location = list(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        position = location[1] if len(location) > 1 else "?"
        reason = error.get("ctx", {}).get("error", "invalid JSON")
        return (
            f"the request body is not valid JSON: {reason} at character {position}; "
            "send a JSON object"
        )
    if location == ["body"]:
        return f"the request body must be a JSON object: {error.get('msg', 'invalid value')}"
    return None


def _is_token_ids(items: list[Any]) -> bool:
    return all(isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in items)


def _field_location(location: Sequence[Any]) -> list[str]:
    names = [str(item) for item in location]
    if names and names[0] == "body":
        names = names[1:]
    return names
