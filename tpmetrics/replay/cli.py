"""The `tpmetrics replay` command: replay a trace, print the end table, check `/metrics`.

Exit codes: 0 when every request completed, every stream's usage matched the
tokens counted and the server's counters grew by the client's counts. 1 when
any of that failed. 2 when the trace could not be read.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import time
from pathlib import Path

import httpx

from tpmetrics.replay.client import (
    ReplayOptions,
    ReplayResult,
    ResponseError,
    fetch_metrics_text,
    fetch_model_ids,
    new_http_client,
    replay_trace,
)
from tpmetrics.replay.summary import (
    ServerCounts,
    check_server_metrics,
    client_counts,
    format_summary,
    read_server_counts,
    summarize,
)
from tpmetrics.replay.trace import TraceRequest, read_trace

logger = logging.getLogger(__name__)

_METRICS_POLL_S = 0.5


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `tpmetrics replay` to `parser`."""
    parser.add_argument(
        "trace",
        type=Path,
        metavar="TRACE",
        help="trace CSV file with the header TIMESTAMP,ContextTokens,GeneratedTokens",
    )

    parser.add_argument(
        "--url",
        metavar="URL",
        default="http://127.0.0.1:8000",
        help="base URL of the OpenAI-compatible server (default: http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="model name to send (default: the first id that GET /v1/models lists)",
    )

    parser.add_argument(
        "--limit", type=int, metavar="N", help="replay only the first N requests of the trace"
    )
    parser.add_argument(
        "--speedup",
        type=float,
        metavar="X",
        default=1.0,
        help="divide every arrival time by X, so 2 replays the trace twice as fast (default: 1)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        metavar="C",
        default=256,
        help="maximum number of requests in flight. A due request waits for a free slot "
        "(default: 256)",
    )

    parser.add_argument(
        "--vocab-size",
        type=int,
        metavar="V",
        default=4096,
        help="prompt token ids are drawn from [3, V). Set V to the model's vocabulary size "
        "(default: 4096)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="do not show the progress bar on stderr"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        default=600.0,
        help="maximum seconds for one request, from sending it to the end of its stream. "
        "The wait for a free slot is not included (default: 600)",
    )

    parser.add_argument(
        "--metrics-timeout",
        type=float,
        metavar="S",
        default=10.0,
        help="maximum seconds to wait after the last reply for the server's /metrics "
        "counters to reach the client's counts (default: 10)",
    )
    parser.add_argument(
        "--skip-metrics-check",
        action="store_true",
        help="do not read /metrics, for servers that do not serve it",
    )


def run_replay(args: argparse.Namespace) -> int:
    """Run `tpmetrics replay` with parsed arguments and return the exit code."""
    try:
        options = _options_from(args)
        requests = read_trace(args.trace, args.limit)
    except OSError as error:
        logger.error("cannot read trace %s: %s", args.trace, error)
        return 2
    except ValueError as error:
        logger.error("%s", error)
        return 2
    if not requests:
        logger.error("trace %s has no requests to replay", args.trace)
        return 2
    try:
        return asyncio.run(_replay(args, options, requests))
    except (httpx.HTTPError, ValueError) as error:
        logger.error("replay against %s failed: %s", args.url, error)
        return 1


def _options_from(args: argparse.Namespace) -> ReplayOptions:
    """Validate the arguments and build the options. The model is empty without --model."""
    if not args.metrics_timeout >= 0:
        raise ValueError(f"invalid --metrics-timeout {args.metrics_timeout}: expected seconds >= 0")
    return ReplayOptions(
        url=args.url,
        model=args.model or "",
        speedup=args.speedup,
        max_concurrency=args.max_concurrency,
        vocab_size=args.vocab_size,
        timeout_s=args.timeout,
        show_progress=not args.no_progress,
    )


async def _replay(
    args: argparse.Namespace, options: ReplayOptions, requests: list[TraceRequest]
) -> int:
    client = new_http_client(options.url, options.max_concurrency, options.timeout_s)
    async with client:
        if not options.model:
            options = dataclasses.replace(options, model=await _first_model_id(client, options.url))
        model = options.model
        before = None
        if not args.skip_metrics_check:
            before = read_server_counts(await _fetch_metrics_before(client, options.url), model)
        logger.info(
            "replaying %d requests against %s, model %s, speedup %g",
            len(requests),
            options.url,
            model,
            options.speedup,
        )
        result = await replay_trace(requests, options, client)
        print(format_summary(summarize(result)), flush=True)
        exit_code = _report_request_problems(result)
        if before is not None:
            expected = before + client_counts(result)
            mismatches = await _wait_for_counters(client, model, expected, args.metrics_timeout)
            exit_code = max(exit_code, _report_mismatches(mismatches, args.metrics_timeout))
        return exit_code


async def _first_model_id(client: httpx.AsyncClient, url: str) -> str:
    model_ids = await fetch_model_ids(client)
    if not model_ids:
        raise ValueError(f"GET {url.rstrip('/')}/v1/models lists no model: pass --model NAME")
    return model_ids[0]


async def _fetch_metrics_before(client: httpx.AsyncClient, url: str) -> str:
    try:
        return await fetch_metrics_text(client)
    except (httpx.HTTPError, ResponseError) as error:
        raise ValueError(
            f"cannot read {url.rstrip('/')}/metrics before the replay ({error}). "
            "Pass --skip-metrics-check for a server without /metrics"
        ) from error


async def _wait_for_counters(
    client: httpx.AsyncClient, model: str, expected: ServerCounts, timeout_s: float
) -> list[str]:
    """Poll `/metrics` until the counters equal `expected` or `timeout_s` passes.

    Returns the mismatches of the last poll, which is empty when the counters match.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        mismatches = check_server_metrics(await fetch_metrics_text(client), model, expected)
        if not mismatches or time.monotonic() >= deadline:
            return mismatches
        await asyncio.sleep(_METRICS_POLL_S)


def _report_request_problems(result: ReplayResult) -> int:
    failed = [request for request in result.results if not request.ok]
    miscounted = [request for request in result.results if request.token_count_error]
    if failed:
        logger.error("%d of %d requests failed", len(failed), len(result.results))
    for request in miscounted[:10]:
        logger.error("request %d: %s", request.index, request.token_count_error)
    if len(miscounted) > 10:
        logger.error("%d requests in all have token counts that disagree", len(miscounted))
    return 1 if failed or miscounted else 0


def _report_mismatches(mismatches: list[str], timeout_s: float) -> int:
    if not mismatches:
        print("server /metrics counters match the client's counts", flush=True)
        return 0
    print(
        f"MISMATCH: server /metrics counters differ from the client's counts "
        f"after waiting {timeout_s:g} s:",
        file=sys.stderr,
        flush=True,
    )
    for message in mismatches:
        print(f"  {message}", file=sys.stderr, flush=True)
    return 1
