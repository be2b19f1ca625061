"""`POST /v1/completions` and `GET /v1/models`, served by the engine actors.

Each prompt of a request, times `n`, becomes one engine request; the router
picks its engine. Streams send one chunk per generated token, so a client
can time every token, then a chunk with the finish reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tpmetrics.engine.request import FinalOutput, TokenBatch
from tpmetrics.head.openai_protocol import (
    SSE_DONE,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorDetail,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
    invalid_request,
    new_completion_id,
    sse_event,
    unix_time,
    validation_error_response,
)
from tpmetrics.head.router import EngineRouter
from tpmetrics.head.tokenizer import ByteTokenizer, IncrementalDecoder

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.5
"""Seconds between checks for a client that left a non-streamed completion."""


@dataclass(frozen=True)
class ServedModel:
    """The facts about the served model that the head checks requests against."""

    name: str
    vocab_size: int
    max_model_len: int
    created: int


@dataclass(frozen=True, slots=True)
class Token:
    """One generated token; `finish_reason` is set on the last token of a request."""

    token_id: int
    finish_reason: str | None = None


@dataclass(frozen=True)
class EngineRequest:
    """One sequence to generate: one prompt of a request, for one of its `n` choices."""

    request_id: str
    index: int
    prompt: list[int]
    max_tokens: int
    ignore_eos: bool
    n_param: int | None
    arrival_time: float


class InvalidRequestError(ValueError):
    """A request the engines cannot serve, with the parameter it is about."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


async def validation_exception_handler(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return JSONResponse(validation_error_response(error.errors()).model_dump(), status_code=400)


def engine_requests(
    body: CompletionRequest, model: ServedModel, tokenizer: ByteTokenizer
) -> list[EngineRequest]:
    """Split a completion request into engine requests, checking every prompt first."""
    completion_id = new_completion_id()
    arrival = time.time()
    requests = []
    for p, prompt in enumerate(body.prompts):
        ids = tokenizer.encode(prompt) if isinstance(prompt, str) else cast(list[int], prompt)
        check_prompt(ids, body.max_tokens, model)
        for choice in range(body.n):
            index = p * body.n + choice
            requests.append(
                EngineRequest(
                    request_id=f"{completion_id}-{index}",
                    index=index,
                    prompt=ids,
                    max_tokens=body.max_tokens,
                    ignore_eos=body.ignore_eos,
                    n_param=body.n if choice == 0 else None,
                    arrival_time=arrival,
                )
            )
    return requests


def check_prompt(ids: list[int], max_tokens: int, model: ServedModel) -> None:
    if not ids:
        raise InvalidRequestError(
            "the prompt encodes to no tokens: send a non-empty prompt", "prompt"
        )
    too_large = [token for token in ids if token >= model.vocab_size]
    if too_large:
        raise InvalidRequestError(
            f"token ids {too_large[:5]} are outside the vocabulary of {model.vocab_size} tokens "
            f"of model {model.name!r}",
            "prompt",
        )
    if len(ids) >= model.max_model_len:
        raise InvalidRequestError(
            f"the prompt has {len(ids)} tokens, but this model's context length is "
            f"{model.max_model_len}, which must also hold at least one generated token: "
            "shorten the prompt",
            "prompt",
        )
    if len(ids) + max_tokens > model.max_model_len:
        raise InvalidRequestError(
            f"the prompt has {len(ids)} tokens and max_tokens is {max_tokens}, "
            f"{len(ids) + max_tokens} in all, but this model's context length is "
            f"{model.max_model_len}: shorten the prompt or lower max_tokens",
            "max_tokens",
        )


async def generate(
    router: EngineRouter, request: EngineRequest
) -> AsyncIterator[Token | FinalOutput]:
    """Stream one engine request's tokens, then its `FinalOutput`.

    The request is aborted in the engine if the consumer stops early.
    """
    index = router.pick()
    with router.track(index) as engine:
        stream = engine.generate.options(num_returns="streaming").remote(
            request.request_id,
            request.prompt,
            request.max_tokens,
            ignore_eos=request.ignore_eos,
            n_param=request.n_param,
            arrival_time=request.arrival_time,
        )
        finished = False
        try:
            async for ref in stream:
                item = await ref
                if isinstance(item, TokenBatch):
                    last = len(item.token_ids) - 1
                    for i, token in enumerate(item.token_ids):
                        reason = item.finish_reason if i == last else None
                        yield Token(token, None if reason is None else reason.value)
                else:
                    finished = True
                    yield item
        finally:
            if not finished:
                logger.info("engine %d: aborting request %s", index, request.request_id)
                engine.abort.remote(request.request_id)


class CompletionService:
    """Serves completions of one model through the engine router."""

    def __init__(self, model: ServedModel, router: EngineRouter) -> None:
        self.model = model
        self.router = router
        self.tokenizer = ByteTokenizer(model.vocab_size)

    async def models(self, request: Request) -> JSONResponse:
        card = ModelCard(id=self.model.name, created=self.model.created)
        return JSONResponse(ModelList(data=[card]).model_dump())

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        if body.model != self.model.name:
            return error_response(
                404,
                f"model {body.model!r} not found: this server serves {self.model.name!r}",
                "model",
                "model_not_found",
            )
        if body.unsupported_fields:
            logger.info("ignoring unsupported completion fields %s", body.unsupported_fields)
        try:
            requests = engine_requests(body, self.model, self.tokenizer)
        except InvalidRequestError as error:
            logger.info("rejected a completion request: %s", error)
            return JSONResponse(
                invalid_request(str(error), error.param).model_dump(), status_code=400
            )
        except ValueError as error:
            logger.info("rejected a completion request: %s", error)
            return JSONResponse(invalid_request(str(error), "prompt").model_dump(), status_code=400)
        if body.stream:
            events = self._stream(body, requests)
            return StreamingResponse(events, media_type="text/event-stream")
        return await self._complete(body, requests, request)

    async def _complete(
        self, body: CompletionRequest, requests: list[EngineRequest], http_request: Request
    ) -> Response:
        collect = asyncio.ensure_future(self._collect_all(requests))
        while not (await asyncio.wait({collect}, timeout=DISCONNECT_POLL_S))[0]:
            if await http_request.is_disconnected():
                # Cancelling the choices aborts their engine requests.
                collect.cancel()
                logger.info("client gone: aborted completion %s", requests[0].request_id)
                return Response(status_code=499)
        try:
            results = collect.result()
        except ExceptionGroup as errors:
            rejected = [e for e in errors.exceptions if isinstance(e, ValueError)]
            if not rejected:
                raise
            logger.info("an engine rejected completion %s: %s", requests[0].request_id, rejected[0])
            return JSONResponse(invalid_request(str(rejected[0])).model_dump(), status_code=400)
        choices = []
        completion_tokens = 0
        for request, (tokens, final) in zip(requests, results, strict=True):
            choices.append(
                CompletionChoice(
                    index=request.index,
                    text=self.tokenizer.decode(tokens),
                    finish_reason=final.finish_reason.value,
                )
            )
            completion_tokens += len(tokens)
        response = CompletionResponse(
            id=requests[0].request_id.rsplit("-", 1)[0],
            created=unix_time(),
            model=self.model.name,
            choices=choices,
            usage=Usage.from_counts(prompt_tokens(requests, body.n), completion_tokens),
        )
        return JSONResponse(response.model_dump())

    async def _collect_all(
        self, requests: list[EngineRequest]
    ) -> list[tuple[list[int], FinalOutput]]:
        """Run every choice; the first failure cancels, and so aborts, the others."""
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._collect(r)) for r in requests]
        return [task.result() for task in tasks]

    async def _collect(self, request: EngineRequest) -> tuple[list[int], FinalOutput]:
        tokens: list[int] = []
        async for item in generate(self.router, request):
            if isinstance(item, FinalOutput):
                return tokens, item
            tokens.append(item.token_id)
        raise RuntimeError(
            f"request {request.request_id}: the engine stream ended without a final output"
        )

    async def _stream(
        self, body: CompletionRequest, requests: list[EngineRequest]
    ) -> AsyncIterator[str]:
        completion_id = requests[0].request_id.rsplit("-", 1)[0]
        created = unix_time()
        queue: asyncio.Queue[tuple[EngineRequest, Token | FinalOutput | BaseException | None]] = (
            asyncio.Queue()
        )
        tasks = [asyncio.create_task(self._pump(r, queue)) for r in requests]
        decoders = {r.index: IncrementalDecoder(self.model.vocab_size) for r in requests}

        def chunk(index: int, text: str, finish_reason: Any = None) -> str:
            choice = CompletionChoice(index=index, text=text, finish_reason=finish_reason)
            return sse_event(
                CompletionResponse(
                    id=completion_id, created=created, model=self.model.name, choices=[choice]
                )
            )

        completion_tokens = 0
        finished: set[int] = set()
        remaining = len(tasks)
        try:
            while remaining:
                request, item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    message = f"request {request.request_id} failed: {type(item).__name__}: {item}"
                    logger.warning(message)
                    yield sse_event(
                        ErrorResponse(error=ErrorDetail(message=message, type="server_error"))
                    )
                    return
                elif isinstance(item, FinalOutput):
                    if request.index not in finished:
                        reason = item.finish_reason.value
                        yield chunk(request.index, decoders[request.index].flush(), reason)
                else:
                    completion_tokens += 1
                    decoder = decoders[request.index]
                    text = decoder.decode(item.token_id)
                    if item.finish_reason is not None:
                        # The last token's chunk carries the finish reason, as vLLM's does.
                        text += decoder.flush()
                        finished.add(request.index)
                    yield chunk(request.index, text, item.finish_reason)
            if body.include_usage:
                usage = Usage.from_counts(prompt_tokens(requests, body.n), completion_tokens)
                yield sse_event(
                    CompletionResponse(
                        id=completion_id,
                        created=created,
                        model=self.model.name,
                        choices=[],
                        usage=usage,
                    )
                )
            yield SSE_DONE
        finally:
            for task in tasks:
                task.cancel()

    async def _pump(
        self,
        request: EngineRequest,
        queue: asyncio.Queue[tuple[EngineRequest, Token | FinalOutput | BaseException | None]],
    ) -> None:
        try:
            async for item in generate(self.router, request):
                await queue.put((request, item))
        except Exception as error:
            await queue.put((request, error))
        finally:
            await queue.put((request, None))


def prompt_tokens(requests: list[EngineRequest], n: int) -> int:
    """Count each prompt once, however many choices it has."""
    return sum(len(r.prompt) for r in requests[::n])
