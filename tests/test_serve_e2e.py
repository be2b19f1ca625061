"""The whole path on real Ray: TP worker actors, engines, aggregator, head, a trace replay.

One deployment (TP 2 x DP 2, the reference model) serves every test in this
module. So each test compares deltas of `/metrics` with what it sent itself.
"""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import prometheus, serve_app
from tests.support import wait_for
from tpmetrics.head.deployment import Deployment, ServeConfig
from tpmetrics.replay.client import ReplayOptions, replay_trace
from tpmetrics.replay.trace import read_trace

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
CODE_TRACE = TRACES / "AzureLLMInferenceTrace_code.csv"
TP, DP = 2, 2
MODEL = f"e2e-{uuid.uuid4().hex[:6]}"

PER_REQUEST_HISTOGRAMS = (
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
    "vllm:request_params_n",
    "vllm:request_params_max_tokens",
    "vllm:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:request_num_preemptions",
)

# vLLM's own "metrics exist" list for a server that has served one request.
EXPECTED_NAMES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:num_requests_waiting_by_reason",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:iteration_tokens_total_count",
    "vllm:cache_config_info",
    "vllm:request_success_total",
    "vllm:inter_token_latency_seconds_count",
    *(f"{name}_count" for name in PER_REQUEST_HISTOGRAMS),
)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    config = ServeConfig(
        model="tiny-llama",
        served_model_name=MODEL,
        tensor_parallel_size=TP,
        data_parallel_size=DP,
        max_model_len=8192,
        num_kv_blocks=1024,
        max_num_batched_tokens=2048,
        flush_interval_s=0.5,
    )
    deployment = Deployment(config)
    app = deployment.start()
    try:
        with serve_app(app) as url:
            yield url
    finally:
        deployment.stop()


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("model_name") == MODEL
    }


def total(all_samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    """Sum a sample name over every engine and label value of this module's model."""
    return sum(value for (sample, _), value in all_samples.items() if sample == name)


def settle(url: str, name: str, expected: float, before: float = 0.0) -> float:
    """Wait until `name`'s total has grown by `expected`; return the growth."""
    last: list[float] = [math.nan]

    def grown() -> bool:
        last[0] = total(samples(url), name) - before
        return last[0] == expected

    try:
        wait_for(grown, timeout_s=15, what=f"{name} to grow by {expected}")
    except AssertionError:
        raise AssertionError(f"{name}: expected growth {expected}, got {last[0]}") from None
    return last[0]


def replay(url: str, limit: int, speedup: float = 20.0) -> tuple[int, int, int]:
    """Replay the first `limit` code-trace requests; return requests, prompt and output tokens."""
    if not CODE_TRACE.is_file():
        pytest.skip(f"trace not found at {CODE_TRACE}")
    requests = read_trace(CODE_TRACE, limit=limit)
    options = ReplayOptions(url=url, model=MODEL, speedup=speedup, show_progress=False)
    result = asyncio.run(replay_trace(requests, options))
    failures = [r.error for r in result.results if not r.ok]
    token_count_errors = [r.token_count_error for r in result.results if r.token_count_error]
    assert failures == []
    assert token_count_errors == []
    prompt = sum(r.prompt_tokens for r in requests)
    output = sum(r.output_tokens for r in result.results)
    return len(requests), prompt, output


def test_replay_matches_client_ground_truth(server: str) -> None:
    before = samples(server)
    sent, prompt, output = replay(server, limit=10)

    assert output == sum(r.output_tokens for r in read_trace(CODE_TRACE, limit=10))
    assert (
        settle(
            server, "vllm:request_success_total", sent, total(before, "vllm:request_success_total")
        )
        == sent
    )
    after = samples(server)
    assert (
        total(after, "vllm:prompt_tokens_total") - total(before, "vllm:prompt_tokens_total")
        == prompt
    )
    assert (
        total(after, "vllm:generation_tokens_total") - total(before, "vllm:generation_tokens_total")
        == output
    )
    for name in PER_REQUEST_HISTOGRAMS:
        count = f"{name}_count"
        assert total(after, count) - total(before, count) == sent, count
    itl = "vllm:inter_token_latency_seconds_count"
    assert total(after, itl) - total(before, itl) == output - sent


def completion(url: str, prompt: list[int], max_tokens: int) -> dict[str, object]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    response.raise_for_status()
    result: dict[str, object] = response.json()
    return result


def test_iteration_tokens_sum_identical_requests(server: str) -> None:
    n, prompt_len, output_len = 5, 10, 6
    name = "vllm:iteration_tokens_total_sum"
    before = total(samples(server), name)
    for _ in range(n):
        completion(server, list(range(100, 100 + prompt_len)), output_len)

    assert settle(server, name, n * (prompt_len + output_len), before) == n * (
        prompt_len + output_len
    )


def test_every_vllm_name_exists_after_one_request(server: str) -> None:
    completion(server, [7, 8, 9], 4)
    wait_for(lambda: total(samples(server), "vllm:request_success_total") > 0, what="one request")
    names = {sample for sample, _ in samples(server)}

    assert [name for name in EXPECTED_NAMES if name not in names] == []


def test_rank_families_have_one_series_per_rank(server: str) -> None:
    completion(server, [7, 8, 9], 4)
    all_samples = samples(server)
    ranks = {
        (dict(labels)["engine"], dict(labels)["rank"])
        for name, labels in all_samples
        if name == "tpmetrics:rank_steps_total"
    }
    skews = [
        v for (name, _), v in all_samples.items() if name == "tpmetrics:tp_step_time_skew_ratio"
    ]

    assert ranks == {(str(e), str(r)) for e in range(DP) for r in range(TP)}
    assert len(skews) >= 1
    assert all(v >= 1.0 for v in skews)


def gauges(url: str) -> tuple[float, float, float]:
    all_samples = samples(url)
    return (
        total(all_samples, "vllm:num_requests_running"),
        total(all_samples, "vllm:num_requests_waiting"),
        total(all_samples, "vllm:kv_cache_usage_perc"),
    )


def test_cancelled_requests_release_gauges(server: str) -> None:
    body = {
        "model": MODEL,
        "prompt": [5] * 64,
        "max_tokens": 4000,
        "ignore_eos": True,
        "stream": True,
    }
    stop = threading.Event()
    started = threading.Barrier(4)

    def stream() -> None:
        with (
            httpx.Client(timeout=60) as client,
            client.stream("POST", f"{url}/v1/completions", json=body) as response,
        ):
            lines = response.iter_lines()
            next(line for line in lines if line.startswith("data:"))
            started.wait()
            stop.wait(60)

    url = server
    threads = [threading.Thread(target=stream) for _ in range(3)]
    for thread in threads:
        thread.start()
    started.wait(timeout=60)
    wait_for(lambda: gauges(url)[0] > 0 and gauges(url)[2] > 0, timeout_s=15, what="busy gauges")
    busy = gauges(url)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    wait_for(lambda: gauges(url) == (0.0, 0.0, 0.0), timeout_s=10, what="gauges back to 0")

    assert busy[0] > 0
    assert busy[2] > 0
    assert gauges(url) == (0.0, 0.0, 0.0)


@pytest.mark.prometheus
def test_prometheus_ttft_quantile_during_replay(server: str) -> None:
    with prometheus(server.removeprefix("http://")) as prom:
        wait_for(lambda: bool(prom.query("up == 1")), timeout_s=30, what="first scrape")
        replay(server, limit=8, speedup=10.0)
        query = (
            "histogram_quantile(0.99, sum by (le) "
            f'(rate(vllm:time_to_first_token_seconds_bucket{{model_name="{MODEL}"}}[1m])))'
        )
        values: list[float] = []

        def finite() -> bool:
            values[:] = [float(r["value"][1]) for r in prom.query(query)]
            return len(values) == 1 and math.isfinite(values[0])

        wait_for(finite, timeout_s=30, what="a finite TTFT p99")

    assert math.isfinite(values[0])
    assert values[0] > 0


def test_completion_batch_with_n_choices(server: str) -> None:
    body = {
        "model": MODEL,
        "prompt": [[11, 12, 13], [21, 22]],
        "max_tokens": 3,
        "n": 2,
        "ignore_eos": True,
    }
    response = httpx.post(f"{server}/v1/completions", json=body, timeout=60)
    result = response.json()

    assert response.status_code == 200
    assert [choice["index"] for choice in result["choices"]] == [0, 1, 2, 3]
    assert [choice["finish_reason"] for choice in result["choices"]] == ["length"] * 4
    assert result["usage"] == {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}


def test_completion_too_long_is_rejected(server: str) -> None:
    body = {"model": MODEL, "prompt": [5] * 8000, "max_tokens": 500}
    response = httpx.post(f"{server}/v1/completions", json=body, timeout=60)
    error = response.json()["error"]

    assert response.status_code == 400
    assert error["param"] == "max_tokens"
    assert "8500 in all" in error["message"]


def test_completion_unknown_model_is_404(server: str) -> None:
    body = {"model": "no-such-model", "prompt": "hi", "max_tokens": 2}
    response = httpx.post(f"{server}/v1/completions", json=body, timeout=60)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_models_lists_served_name(server: str) -> None:
    response = httpx.get(f"{server}/v1/models", timeout=30)

    assert [card["id"] for card in response.json()["data"]] == [MODEL]


def test_client_leaving_non_streamed_request_aborts_it(server: str) -> None:
    body = {"model": MODEL, "prompt": [9] * 32, "max_tokens": 4000, "ignore_eos": True}
    name = "vllm:request_success_total"
    aborts_before = sum(
        v
        for (n, labels), v in samples(server).items()
        if n == name and ("finished_reason", "abort") in labels
    )
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/v1/completions", json=body, timeout=2.0)

    def aborted() -> bool:
        now = samples(server)
        aborts = sum(
            v
            for (n, labels), v in now.items()
            if n == name and ("finished_reason", "abort") in labels
        )
        return aborts == aborts_before + 1 and total(now, "vllm:num_requests_running") == 0

    wait_for(aborted, timeout_s=10, what="the abandoned request to be aborted")
