"""The replay's end table and its check of the server's `/metrics` counters."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from tpmetrics.replay.client import ReplayResult, RequestResult
from tpmetrics.replay.summary import (
    LatencyStats,
    ReplaySummary,
    ServerCounts,
    check_server_metrics,
    client_counts,
    format_summary,
    latency_stats,
    read_server_counts,
    summarize,
)

MODEL = "tiny-llama"


def exposition(other_model_traffic: bool = True) -> str:
    """Build `/metrics` text in which MODEL completed 5 requests on 2 engines."""
    registry = CollectorRegistry()
    success = Counter(
        "vllm:request_success",
        "Finished requests.",
        ["model_name", "engine", "finished_reason"],
        registry=registry,
    )
    prompt = Counter(
        "vllm:prompt_tokens", "Prompt tokens.", ["model_name", "engine"], registry=registry
    )
    generation = Counter(
        "vllm:generation_tokens", "Output tokens.", ["model_name", "engine"], registry=registry
    )
    success.labels(MODEL, "0", "length").inc(2)
    success.labels(MODEL, "0", "stop").inc(1)
    success.labels(MODEL, "1", "length").inc(2)
    prompt.labels(MODEL, "0").inc(300)
    prompt.labels(MODEL, "1").inc(1200)
    generation.labels(MODEL, "0").inc(40)
    generation.labels(MODEL, "1").inc(60)
    if other_model_traffic:
        success.labels("other", "0", "length").inc(7)
        prompt.labels("other", "0").inc(999)
        generation.labels("other", "0").inc(99)
    return generate_latest(registry).decode()


def request(index: int, **fields: object) -> RequestResult:
    result = RequestResult(index, prompt_tokens=100, max_tokens=10)
    for name, value in fields.items():
        setattr(result, name, value)
    return result


def test_latency_stats_on_0_to_100_s() -> None:
    stats = latency_stats([float(second) for second in range(101)])
    assert stats == LatencyStats(
        p50_ms=50_000.0, p90_ms=90_000.0, p99_ms=99_000.0, mean_ms=50_000.0
    )


def test_latency_stats_interpolate() -> None:
    stats = latency_stats([0.001, 0.002, 0.003, 0.005])
    assert stats is not None
    assert stats.p50_ms == pytest.approx(2.5)
    assert stats.p90_ms == pytest.approx(4.4)
    assert stats.p99_ms == pytest.approx(4.94)
    assert stats.mean_ms == pytest.approx(2.75)


def test_latency_stats_empty() -> None:
    assert latency_stats([]) is None


def test_read_server_counts_sums_engines_and_reasons() -> None:
    counts = read_server_counts(exposition(), MODEL)
    assert counts == ServerCounts(request_success=5, prompt_tokens=1500, generation_tokens=100)


def test_read_server_counts_unknown_model() -> None:
    counts = read_server_counts(exposition(), "absent")
    assert counts == ServerCounts(0, 0, 0)


def test_check_server_metrics_match() -> None:
    expected = ServerCounts(request_success=5, prompt_tokens=1500, generation_tokens=100)
    assert check_server_metrics(exposition(), MODEL, expected) == []


def test_check_server_metrics_one_mismatch() -> None:
    expected = ServerCounts(request_success=5, prompt_tokens=1500, generation_tokens=101)
    messages = check_server_metrics(exposition(), MODEL, expected)
    assert messages == [
        'vllm:generation_tokens_total{model_name="tiny-llama"}: expected 101, got 100'
    ]


def test_check_server_metrics_every_mismatch() -> None:
    messages = check_server_metrics(exposition(), MODEL, ServerCounts(6, 1501, 100))
    assert len(messages) == 2
    assert messages[0].startswith("vllm:request_success_total")
    assert messages[1].startswith("vllm:prompt_tokens_total")


def test_check_server_metrics_no_series() -> None:
    messages = check_server_metrics(exposition(), "absent", ServerCounts(1, 0, 0))
    assert messages == [
        'vllm:request_success_total{model_name="absent"}: expected 1, got 0 (no series)'
    ]


def test_check_server_metrics_large_counts_exact() -> None:
    registry = CollectorRegistry()
    prompt = Counter("vllm:prompt_tokens", "", ["model_name", "engine"], registry=registry)
    prompt.labels(MODEL, "0").inc(18_060_032)
    text = generate_latest(registry).decode()
    messages = check_server_metrics(text, MODEL, ServerCounts(0, 18_060_033, 0))
    assert messages == [
        'vllm:prompt_tokens_total{model_name="tiny-llama"}: expected 18060033, got 18060032'
    ]


def test_check_deltas_after_earlier_traffic() -> None:
    registry = CollectorRegistry()
    success = Counter(
        "vllm:request_success", "", ["model_name", "engine", "finished_reason"], registry=registry
    )
    generation = Counter("vllm:generation_tokens", "", ["model_name", "engine"], registry=registry)
    success.labels(MODEL, "0", "length").inc(40)
    generation.labels(MODEL, "0").inc(4000)
    before = read_server_counts(generate_latest(registry).decode(), MODEL)
    success.labels(MODEL, "1", "length").inc(2)
    generation.labels(MODEL, "1").inc(20)
    after = generate_latest(registry).decode()
    replayed = ServerCounts(request_success=2, prompt_tokens=0, generation_tokens=20)
    assert check_server_metrics(after, MODEL, before + replayed) == []


def test_server_counts_add() -> None:
    total = ServerCounts(1, 10, 100) + ServerCounts(2, 20, 200)
    assert total == ServerCounts(3, 30, 300)


def test_summarize_counts_completed_requests_only() -> None:
    result = ReplayResult(
        [
            request(0, ttft_s=0.1, itl_s=[0.01, 0.03], e2e_s=0.2, completion_tokens=3, chunks=3),
            request(1, ttft_s=0.3, itl_s=[0.02], e2e_s=0.4, completion_tokens=2, chunks=2),
            request(2, error="HTTP 400: invalid prompt"),
        ],
        duration_s=2.0,
    )
    summary = summarize(result)
    assert summary.requests_ok == 2
    assert summary.requests_failed == 1
    assert summary.prompt_tokens == 200
    assert summary.output_tokens == 5
    assert summary.ttft == latency_stats([0.1, 0.3])
    assert summary.itl == latency_stats([0.01, 0.03, 0.02])
    assert summary.e2e == latency_stats([0.2, 0.4])


def test_client_counts_of_completed_requests() -> None:
    result = ReplayResult(
        [request(0, completion_tokens=3, chunks=3), request(1, error="timed out after 5 s")],
        duration_s=1.0,
    )
    assert client_counts(result) == ServerCounts(1, 100, 3)


def test_output_tokens_fall_back_to_chunks() -> None:
    assert request(0, chunks=4).output_tokens == 4


def test_format_summary_table() -> None:
    summary = ReplaySummary(
        requests_ok=3,
        requests_failed=1,
        duration_s=2.0,
        prompt_tokens=300,
        output_tokens=30,
        ttft=LatencyStats(10.0, 20.0, 30.0, 15.0),
        itl=LatencyStats(1.0, 2.0, 3.0, 1.5),
        e2e=None,
    )
    assert format_summary(summary).splitlines() == [
        "requests ok                   3",
        "requests failed               1",
        "duration                   2.00 s",
        "request throughput         1.50 req/s",
        "prompt tokens               300",
        "output tokens                30",
        "prompt token throughput  150.00 tok/s",
        "output token throughput   15.00 tok/s",
        "total token throughput   165.00 tok/s",
        "",
        "latency (ms)    p50    p90    p99   mean",
        "TTFT          10.00  20.00  30.00  15.00",
        "ITL            1.00   2.00   3.00   1.50",
        "e2e             n/a    n/a    n/a    n/a",
    ]
