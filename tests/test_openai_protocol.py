"""The `/v1/completions` and `/v1/models` bodies: validation, OpenAI's shapes and SSE framing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from tpmetrics.head.openai_protocol import (
    SSE_DONE,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    Usage,
    invalid_request,
    new_completion_id,
    sse_event,
    validation_error_response,
)


def error_body(body: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as error:
        CompletionRequest.model_validate(body)
    return validation_error_response(error.value.errors()).model_dump()


def test_request_defaults() -> None:
    request = CompletionRequest.model_validate({"model": "m", "prompt": "hello"})
    assert request.max_tokens == 16
    assert request.n == 1
    assert request.stream is False
    assert request.include_usage is False
    assert request.ignore_eos is False
    assert request.temperature is None


def test_replay_request_body() -> None:
    request = CompletionRequest.model_validate(
        {
            "model": "m",
            "prompt": [5, 6, 7],
            "max_tokens": 12,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert request.prompts == [[5, 6, 7]]
    assert request.max_tokens == 12
    assert request.ignore_eos is True
    assert request.include_usage is True


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [
        ("one", ["one"]),
        ([3, 4], [[3, 4]]),
        (["a", "b"], ["a", "b"]),
        ([[3], [4, 5]], [[3], [4, 5]]),
    ],
    ids=["text", "token-ids", "text-batch", "token-id-batch"],
)
def test_prompt_shapes(prompt: object, prompts: object) -> None:
    request = CompletionRequest.model_validate({"model": "m", "prompt": prompt})
    assert request.prompts == prompts


@pytest.mark.parametrize(
    "prompt",
    ["", [], [-1], [1, "a"], [[]], [[1], "a"], [True], [1.5], ["a", ""], {"text": "a"}, None],
)
def test_invalid_prompt_rejected(prompt: object) -> None:
    body = error_body({"model": "m", "prompt": prompt})
    assert body["error"]["param"] == "prompt"
    assert body["error"]["message"].startswith("prompt: expected a non-empty string")


def test_temperature_accepted() -> None:
    request = CompletionRequest.model_validate({"model": "m", "prompt": "x", "temperature": 0.7})
    assert request.temperature == 0.7


def test_unsupported_fields_listed() -> None:
    request = CompletionRequest.model_validate(
        {"model": "m", "prompt": "x", "top_p": 0.9, "logprobs": None}
    )
    assert request.unsupported_fields == ["logprobs", "top_p"]


def test_stream_options_need_stream() -> None:
    body = error_body({"model": "m", "prompt": "x", "stream_options": {"include_usage": True}})
    assert body == {
        "error": {
            "message": "stream_options: only allowed when stream is true: set stream to true",
            "type": "invalid_request_error",
            "param": "stream_options",
            "code": None,
        }
    }


def test_max_tokens_below_one_rejected() -> None:
    body = error_body({"model": "m", "prompt": "x", "max_tokens": 0})
    assert body["error"]["param"] == "max_tokens"
    assert body["error"]["message"] == "max_tokens: Input should be greater than or equal to 1"


def test_missing_model_rejected() -> None:
    body = error_body({"prompt": "x"})
    assert body["error"]["param"] == "model"
    assert body["error"]["message"] == "model: Field required"


def test_error_lists_every_field() -> None:
    body = error_body({"prompt": "x", "n": 0})
    assert body["error"]["message"] == (
        "model: Field required; n: Input should be greater than or equal to 1"
    )


def test_fastapi_body_location_dropped() -> None:
    errors = [{"loc": ("body", "max_tokens"), "msg": "Input should be a valid integer"}]
    body = validation_error_response(errors).model_dump()
    assert body["error"]["param"] == "max_tokens"
    assert body["error"]["message"] == "max_tokens: Input should be a valid integer"


def test_invalid_request_shape() -> None:
    body = invalid_request("model 'x' not found", "model").model_dump()
    assert body == {
        "error": {
            "message": "model 'x' not found",
            "type": "invalid_request_error",
            "param": "model",
            "code": None,
        }
    }


def test_completion_response_shape() -> None:
    response = CompletionResponse(
        id="cmpl-1",
        created=1_700_000_000,
        model="m",
        choices=[CompletionChoice(index=0, text="hi", finish_reason="length")],
        usage=Usage.from_counts(prompt_tokens=3, completion_tokens=2),
    )
    assert json.loads(response.model_dump_json()) == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": "m",
        "choices": [{"index": 0, "text": "hi", "finish_reason": "length", "logprobs": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def test_sse_event_framing() -> None:
    chunk = CompletionResponse(
        id="cmpl-1",
        created=1,
        model="m",
        choices=[CompletionChoice(index=0, text="a")],
    )
    event = sse_event(chunk)
    assert event.startswith("data: {")
    assert event.endswith("}\n\n")
    assert json.loads(event.removeprefix("data: "))["usage"] is None


def test_sse_done() -> None:
    assert SSE_DONE == "data: [DONE]\n\n"


def test_usage_chunk_has_no_choices() -> None:
    chunk = CompletionResponse(
        id="cmpl-1", created=1, model="m", choices=[], usage=Usage.from_counts(4, 1)
    )
    assert json.loads(chunk.model_dump_json())["choices"] == []


def test_model_list_shape() -> None:
    body = ModelList(data=[ModelCard(id="tiny", created=5)]).model_dump()
    assert body == {
        "object": "list",
        "data": [{"id": "tiny", "object": "model", "created": 5, "owned_by": "tpmetrics"}],
    }


def test_completion_ids_are_fresh() -> None:
    first, second = new_completion_id(), new_completion_id()
    assert first.startswith("cmpl-")
    assert first != second


def test_invalid_json_body_message() -> None:
    errors = [
        {
            "type": "json_invalid",
            "loc": ("body", 36),
            "msg": "JSON decode error",
            "ctx": {"error": "Expecting value"},
        }
    ]
    response = validation_error_response(errors)

    assert response.error.param is None
    assert response.error.message == (
        "the request body is not valid JSON: Expecting value at character 36; send a JSON object"
    )


def test_non_object_body_message() -> None:
    errors = [
        {
            "type": "model_attributes_type",
            "loc": ("body",),
            "msg": "Input should be a valid dictionary",
        }
    ]
    response = validation_error_response(errors)

    assert response.error.param is None
    assert response.error.message.startswith("the request body must be a JSON object")
