"""The exposition formats: text 0.0.4 and OpenMetrics, with vLLM's names intact."""

from __future__ import annotations

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)

from tests.merge_support import MODEL, engine
from tpmetrics.aggregator.exposition import make_registry, render
from tpmetrics.aggregator.state import MergeState
from tpmetrics.catalog import Catalog
from tpmetrics.workers.reporter import Reporter

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def merged_state() -> MergeState:
    state = MergeState()
    reporter = Reporter(engine(0), Catalog())
    reporter.record(
        step=1,
        observations=[(reporter.series("vllm:iteration_tokens_total"), 100)],
        counters=[(reporter.series("vllm:prompt_tokens"), 5)],
        gauges=[(reporter.series("vllm:num_requests_running"), 2)],
    )
    state.apply(reporter.snapshot(), now=0.0)
    return state


def test_openmetrics_keeps_colon_names() -> None:
    body, content_type = render(make_registry(merged_state(), clock=lambda: 0.0), OPENMETRICS)
    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in parse_openmetrics(body.decode())
        for s in family.samples
        if s.labels.get("model_name") == MODEL
    }

    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert samples[("vllm:prompt_tokens_total", None)] == 5
    assert samples[("vllm:iteration_tokens_total_bucket", "128.0")] == 1
    assert samples[("vllm:iteration_tokens_total_count", None)] == 1
    assert samples[("vllm:num_requests_running", None)] == 2


def test_text_format_is_default() -> None:
    body, content_type = render(make_registry(merged_state(), clock=lambda: 0.0))

    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b'vllm:prompt_tokens_total{engine="0",model_name="llama"} 5.0' in body


def test_name_filter_keeps_requested_samples() -> None:
    names = ["vllm:prompt_tokens_total", "vllm:iteration_tokens_total_sum"]
    body, _ = render(make_registry(merged_state(), clock=lambda: 0.0), names=names)
    lines = [line for line in body.decode().splitlines() if not line.startswith("#")]

    assert lines == [
        'vllm:iteration_tokens_total_sum{engine="0",model_name="llama"} 100.0',
        'vllm:prompt_tokens_total{engine="0",model_name="llama"} 5.0',
    ]
