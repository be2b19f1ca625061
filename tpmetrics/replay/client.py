"""Open-loop load generator that replays a trace against an OpenAI-compatible server.

Request i is due at `arrival_s / speedup` seconds after the replay starts,
whatever happened to earlier requests. At most `max_concurrency` requests are
in flight, and a due request that finds every slot taken waits for one. Every
client-side latency (TTFT and end-to-end) is measured from the time the request
was due, so the wait for a slot counts in it, as it would for a user queued in
a real client. `queue_s` records the time from due to sending on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from tpmetrics.replay.trace import TraceRequest

logger = logging.getLogger(__name__)

FIRST_PROMPT_ID = 3  # ids 0, 1 and 2 are the pad, BOS and EOS special tokens
_INDEX_RANGE = 2**32  # prompts of one length are distinct for this many requests
_LOGGED_FAILURES = 10


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """Settings of one replay.

    `url` is the server's base URL (`http://127.0.0.1:8000`). `timeout_s` limits
    each request's HTTP exchange, from sending it to the end of its stream,
    and does not include the wait for a concurrency slot.
    """

    url: str
    model: str
    speedup: float = 1.0
    max_concurrency: int = 256
    vocab_size: int = 4096
    timeout_s: float = 600.0
    show_progress: bool = True

    def __post_init__(self) -> None:
        if not self.speedup > 0:
            raise ValueError(f"invalid speedup {self.speedup}: expected a number above 0")
        if self.max_concurrency < 1:
            raise ValueError(
                f"invalid max_concurrency {self.max_concurrency}: expected at least 1 request"
            )
        if self.vocab_size < FIRST_PROMPT_ID + 2:
            raise ValueError(
                f"invalid vocab_size {self.vocab_size}: expected at least {FIRST_PROMPT_ID + 2}, "
                f"because prompts use ids {FIRST_PROMPT_ID} and up"
            )
        if not self.timeout_s > 0:
            raise ValueError(f"invalid timeout_s {self.timeout_s}: expected seconds above 0")


@dataclass(slots=True)
class RequestResult:
    """Client-side measurements of one request. Times are in seconds.

    `ttft_s` and `e2e_s` run from the time the request was due, and `itl_s`
    contains the gaps between consecutive chunks that carry a choice.
    `completion_tokens` is the usage chunk's count, and `chunks` the number of
    chunks that carried a choice. `error` is set when the request failed, and
    `token_count_error` when it completed but its token counts disagree.
    """

    index: int
    prompt_tokens: int
    max_tokens: int
    queue_s: float = 0.0
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    e2e_s: float | None = None
    completion_tokens: int | None = None
    usage_prompt_tokens: int | None = None
    chunks: int = 0
    error: str | None = None
    token_count_error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the server completed the request."""
        return self.error is None

    @property
    def output_tokens(self) -> int:
        """Tokens received: the usage count when the stream had one, else the chunk count."""
        return self.chunks if self.completion_tokens is None else self.completion_tokens


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """Results of every request, in trace order, and the time from start to the last reply."""

    results: list[RequestResult]
    duration_s: float


def make_prompt(index: int, length: int, vocab_size: int) -> list[int]:
    """Return the deterministic prompt of request `index`: `length` ids in `[3, vocab_size)`.

    The first tokens spell `index` in base `vocab_size - 3`, least significant
    digit first, and the rest come from a generator seeded with `index`. So two
    prompts of one length differ while both indexes are under
    `min(2**32, (vocab_size - 3) ** length)`.
    """
    base = vocab_size - FIRST_PROMPT_ID
    rng = np.random.default_rng(index)
    tokens = rng.integers(FIRST_PROMPT_ID, vocab_size, size=length)
    for position in range(min(length, _digit_count(base))):
        tokens[position] = FIRST_PROMPT_ID + (index // base**position) % base
    prompt: list[int] = tokens.tolist()
    return prompt


def _digit_count(base: int) -> int:
    """Return the number of base-`base` digits that index `_INDEX_RANGE` requests."""
    digits = 1
    while base**digits < _INDEX_RANGE:
        digits += 1
    return digits


def completion_body(index: int, request: TraceRequest, options: ReplayOptions) -> dict[str, Any]:
    """Build the streamed `/v1/completions` request body for trace request `index`."""
    return {
        "model": options.model,
        "prompt": make_prompt(index, request.prompt_tokens, options.vocab_size),
        "max_tokens": request.output_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def new_http_client(url: str, max_concurrency: int, timeout_s: float) -> httpx.AsyncClient:
    """Create an HTTP client for the server at `url` with one connection per concurrency slot.

    Proxy settings from the environment are ignored, so requests go straight to the server.
    """
    limits = httpx.Limits(
        max_connections=max_concurrency, max_keepalive_connections=max_concurrency
    )
    return httpx.AsyncClient(
        base_url=url, timeout=httpx.Timeout(timeout_s), limits=limits, trust_env=False
    )


async def replay_trace(
    requests: Sequence[TraceRequest],
    options: ReplayOptions,
    client: httpx.AsyncClient | None = None,
) -> ReplayResult:
    """Send every request at its due time and return what the client measured.

    A failed request is recorded in its result and never stops the replay.
    When `client` is None, a client from `new_http_client` is created and closed.
    """
    if client is None:
        own_client = new_http_client(options.url, options.max_concurrency, options.timeout_s)
        async with own_client:
            return await replay_trace(requests, options, own_client)

    sender = _Sender(client, options)
    tasks = []
    with _ReplayProgress(len(requests), options.show_progress) as progress:
        start = time.perf_counter()
        for index, request in enumerate(requests):
            due = start + request.arrival_s / options.speedup
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            send = sender.send(index, request, due)
            tasks.append(asyncio.create_task(progress.track(send)))
        results = list(await asyncio.gather(*tasks))
    return ReplayResult(results, time.perf_counter() - start)


async def fetch_model_ids(client: httpx.AsyncClient) -> list[str]:
    """Return the model ids that `GET /v1/models` lists, in the server's order."""
    response = await client.get("/v1/models")
    _check_status(response)
    body = response.json()
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ResponseError(f"GET /v1/models returned no data list: {response.text[:200]!r}")
    return [str(card["id"]) for card in data if isinstance(card, dict) and "id" in card]


async def fetch_metrics_text(client: httpx.AsyncClient) -> str:
    """Return the server's `/metrics` in the Prometheus text format."""
    response = await client.get("/metrics", headers={"Accept": "text/plain"})
    _check_status(response)
    return response.text


def _check_status(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise ResponseError(
            f"GET {response.url} returned HTTP {response.status_code}: {_error_message(response)}"
        )


class ResponseError(ValueError):
    """An error response, or a stream that does not follow OpenAI's completions stream format."""


class _ReplayProgress:
    """The tqdm progress bar on stderr with a count of failed requests.

    The first `_LOGGED_FAILURES` failures are logged one by one, and later ones only counted.
    """

    def __init__(self, total: int, enabled: bool) -> None:
        self.failed = 0
        self._bar = tqdm(total=total, unit="req", file=sys.stderr, disable=not enabled)

    def __enter__(self) -> _ReplayProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.close()
        if self.failed > _LOGGED_FAILURES:
            logger.warning("%d requests failed in all", self.failed)

    async def track(self, send: Awaitable[RequestResult]) -> RequestResult:
        result = await send
        self._bar.update(1)
        if not result.ok:
            self._record_failure(result)
        return result

    def _record_failure(self, result: RequestResult) -> None:
        self.failed += 1
        self._bar.set_postfix(failed=self.failed)
        if self.failed <= _LOGGED_FAILURES:
            logger.warning("request %d failed: %s", result.index, result.error)
        if self.failed == _LOGGED_FAILURES:
            logger.warning("further failures are counted but not logged")


class _Sender:
    """Sends requests through `client`, at most `max_concurrency` at a time."""

    def __init__(self, client: httpx.AsyncClient, options: ReplayOptions) -> None:
        self._client = client
        self._options = options
        self._slots = asyncio.Semaphore(options.max_concurrency)

    async def send(self, index: int, request: TraceRequest, due: float) -> RequestResult:
        """Wait for a free slot, then send request `index` and measure it from `due`."""
        result = RequestResult(index, request.prompt_tokens, request.output_tokens)
        timeout_s = self._options.timeout_s
        async with self._slots:
            result.queue_s = max(0.0, time.perf_counter() - due)
            body = completion_body(index, request, self._options)
            try:
                async with asyncio.timeout(timeout_s):
                    await _stream_completion(self._client, body, due, result)
            except TimeoutError:
                result.error = f"timed out after {timeout_s:g} s"
            except (httpx.HTTPError, ResponseError) as error:
                result.error = f"{type(error).__name__}: {error}"
        if result.ok:
            result.token_count_error = _compare_token_counts(result)
        return result


async def _stream_completion(
    client: httpx.AsyncClient, body: dict[str, Any], due: float, result: RequestResult
) -> None:
    """Send one streamed completion and record its timings and token counts in `result`."""
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise ResponseError(f"HTTP {response.status_code}: {_error_message(response)}")
        last_chunk_at: float | None = None
        async for data in _sse_data(response):
            now = time.perf_counter()
            if data == "[DONE]":
                result.e2e_s = now - due
                return
            chunk = _parse_chunk(data)
            if _carries_token(chunk):
                if last_chunk_at is None:
                    result.ttft_s = now - due
                else:
                    result.itl_s.append(now - last_chunk_at)
                last_chunk_at = now
                result.chunks += 1
            _record_usage(chunk.get("usage"), result)
    raise ResponseError("stream ended before data: [DONE]")


def _carries_token(chunk: dict[str, Any]) -> bool:
    """Tell whether a chunk carries generated text, not only a finish reason."""
    choices = chunk["choices"]
    if not choices:
        return False
    return not all(c.get("finish_reason") and not c.get("text") for c in choices)


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """Yield the data of each server-sent event; several `data:` lines of one event are joined."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
            lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    if lines:
        yield "\n".join(lines)


def _parse_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise ResponseError(f"invalid JSON in stream event {data[:200]!r}") from None
    if not isinstance(chunk, dict):
        raise ResponseError(f"stream event is not a JSON object: {data[:200]!r}")
    if "error" in chunk:
        raise ResponseError(f"error event in stream: {_message_of(chunk)}")
    if not isinstance(chunk.get("choices"), list):
        raise ResponseError(f"stream chunk without a choices list: {data[:200]!r}")
    return chunk


def _record_usage(usage: object, result: RequestResult) -> None:
    if usage is None:
        return
    if not isinstance(usage, dict):
        raise ResponseError(f"invalid usage in stream chunk: {usage!r}")
    completion_tokens = usage.get("completion_tokens")
    prompt_tokens = usage.get("prompt_tokens")
    if not isinstance(completion_tokens, int) or not isinstance(prompt_tokens, int):
        raise ResponseError(f"usage without integer token counts: {usage!r}")
    result.completion_tokens = completion_tokens
    result.usage_prompt_tokens = prompt_tokens


def _compare_token_counts(result: RequestResult) -> str | None:
    """Describe how the usage chunk disagrees with what the client counted, or return None.

    NOTE: the chunk count equals the token count only for a server that sends
    one chunk per generated token. A server that batches several tokens into
    one chunk is reported here as disagreeing.
    """
    problems = []
    if result.completion_tokens is None:
        problems.append("the stream had no usage chunk")
    elif result.completion_tokens != result.chunks:
        problems.append(
            f"usage reports {result.completion_tokens} completion tokens, "
            f"but the stream carried {result.chunks} chunks with a choice"
        )
    usage_prompt_tokens = result.usage_prompt_tokens
    if usage_prompt_tokens is not None and usage_prompt_tokens != result.prompt_tokens:
        problems.append(
            f"usage reports {usage_prompt_tokens} prompt tokens, "
            f"but the prompt had {result.prompt_tokens}"
        )
    return "; ".join(problems) or None


def _error_message(response: httpx.Response) -> str:
    """Return the message of an OpenAI error body, or the start of the body as text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    return _message_of(body) if isinstance(body, dict) else response.text[:500]


def _message_of(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])
    return json.dumps(body)[:500]
