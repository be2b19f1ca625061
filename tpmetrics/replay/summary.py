"""The replay's end table and the check of the server's `/metrics` counters.

The check compares three vLLM counters of one served model, each summed over
every `engine` (and, for requests, every `finished_reason`), with the
client's own counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tpmetrics.replay.client import ReplayResult

REQUEST_SUCCESS = "vllm:request_success_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"


@dataclass(frozen=True, slots=True)
class ServerCounts:
    """Values of the three checked counters, or the client's count of the same things."""

    request_success: float
    prompt_tokens: float
    generation_tokens: float

    def by_metric(self) -> dict[str, float]:
        """Return the counts keyed by exported sample name."""
        return {
            REQUEST_SUCCESS: self.request_success,
            PROMPT_TOKENS: self.prompt_tokens,
            GENERATION_TOKENS: self.generation_tokens,
        }

    def __add__(self, other: ServerCounts) -> ServerCounts:
        return ServerCounts(
            self.request_success + other.request_success,
            self.prompt_tokens + other.prompt_tokens,
            self.generation_tokens + other.generation_tokens,
        )


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Percentiles and mean of one latency, in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """Numbers of the end table. A latency is None when no request measured it."""

    requests_ok: int
    requests_failed: int
    duration_s: float
    prompt_tokens: int
    output_tokens: int
    ttft: LatencyStats | None
    itl: LatencyStats | None
    e2e: LatencyStats | None


def summarize(result: ReplayResult) -> ReplaySummary:
    """Compute the end table's numbers. Tokens and latencies count completed requests only."""
    completed = [request for request in result.results if request.ok]
    return ReplaySummary(
        requests_ok=len(completed),
        requests_failed=len(result.results) - len(completed),
        duration_s=result.duration_s,
        prompt_tokens=sum(request.prompt_tokens for request in completed),
        output_tokens=sum(request.output_tokens for request in completed),
        ttft=latency_stats([r.ttft_s for r in completed if r.ttft_s is not None]),
        itl=latency_stats([gap for r in completed for gap in r.itl_s]),
        e2e=latency_stats([r.e2e_s for r in completed if r.e2e_s is not None]),
    )


def client_counts(result: ReplayResult) -> ServerCounts:
    """Return what the server's counters should have grown by: completed requests and their tokens.

    Failed requests count nothing, although a server may have counted the
    prompt tokens of a request that failed after its prefill.
    """
    completed = [request for request in result.results if request.ok]
    return ServerCounts(
        request_success=len(completed),
        prompt_tokens=sum(request.prompt_tokens for request in completed),
        generation_tokens=sum(request.output_tokens for request in completed),
    )


def latency_stats(values_s: Sequence[float]) -> LatencyStats | None:
    """Return p50, p90, p99 and mean of latencies given in seconds, or None if there are none.

    Percentiles interpolate linearly between the two nearest values (numpy's
    default method).
    """
    if not values_s:
        return None
    values_ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(values_ms, [50, 90, 99])
    return LatencyStats(float(p50), float(p90), float(p99), float(values_ms.mean()))


def format_summary(summary: ReplaySummary) -> str:
    """Render the end table as plain text with aligned columns."""
    duration = summary.duration_s
    rows = [
        ("requests ok", f"{summary.requests_ok}", ""),
        ("requests failed", f"{summary.requests_failed}", ""),
        ("duration", f"{duration:.2f}", "s"),
        ("request throughput", _rate(summary.requests_ok, duration), "req/s"),
        ("prompt tokens", f"{summary.prompt_tokens}", ""),
        ("output tokens", f"{summary.output_tokens}", ""),
        ("prompt token throughput", _rate(summary.prompt_tokens, duration), "tok/s"),
        ("output token throughput", _rate(summary.output_tokens, duration), "tok/s"),
        (
            "total token throughput",
            _rate(summary.prompt_tokens + summary.output_tokens, duration),
            "tok/s",
        ),
    ]
    name_width = max(len(name) for name, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    lines = [
        f"{name:<{name_width}}  {value:>{value_width}} {unit}".rstrip()
        for name, value, unit in rows
    ]
    lines.append("")
    lines.extend(_latency_table(summary))
    return "\n".join(lines)


def _rate(count: int, duration_s: float) -> str:
    return f"{count / duration_s:.2f}" if duration_s > 0 else "n/a"


def _latency_table(summary: ReplaySummary) -> list[str]:
    header = ("latency (ms)", "p50", "p90", "p99", "mean")
    rows: list[tuple[str, ...]] = [header]
    for name, stats in (("TTFT", summary.ttft), ("ITL", summary.itl), ("e2e", summary.e2e)):
        if stats is None:
            rows.append((name, "n/a", "n/a", "n/a", "n/a"))
        else:
            values = (stats.p50_ms, stats.p90_ms, stats.p99_ms, stats.mean_ms)
            rows.append((name, *(f"{value:.2f}" for value in values)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return [
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def read_server_counts(metrics_text: str, model_name: str) -> ServerCounts:
    """Sum the three checked counters of `model_name` over all their other labels."""
    totals = _sum_samples(metrics_text, model_name)
    return ServerCounts(
        totals.get(REQUEST_SUCCESS, 0.0),
        totals.get(PROMPT_TOKENS, 0.0),
        totals.get(GENERATION_TOKENS, 0.0),
    )


def check_server_metrics(metrics_text: str, model_name: str, expected: ServerCounts) -> list[str]:
    """Compare the server's counters of `model_name` with `expected`.

    Returns one message per counter that differs, naming the counter, the
    expected value and the value found, or an empty list when all three match.

    Each counter is summed over every series of the model (every `engine`, and
    every `finished_reason` for requests). A counter without any series counts as 0.
    """
    totals = _sum_samples(metrics_text, model_name)
    messages = []
    for name, expected_value in expected.by_metric().items():
        got = totals.get(name)
        got_value = 0.0 if got is None else got
        if got_value == expected_value:
            continue
        want = _format_count(expected_value)
        got_text = _format_count(got_value) + (" (no series)" if got is None else "")
        series = f'{name}{{model_name="{model_name}"}}'
        messages.append(f"{series}: expected {want}, got {got_text}")
    return messages


def _format_count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _sum_samples(metrics_text: str, model_name: str) -> dict[str, float]:
    """Sum the samples of the checked counters that carry `model_name`, per sample name."""
    checked = {REQUEST_SUCCESS, PROMPT_TOKENS, GENERATION_TOKENS}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in checked and sample.labels.get("model_name") == model_name:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals
