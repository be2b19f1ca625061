"""A real EngineCore actor with TP 2 on the tiny model, reporting to the aggregator."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from tests.support import wait_for
from tpmetrics.aggregator.actor import start_aggregator
from tpmetrics.engine.core import EngineConfig, launch_engine
from tpmetrics.engine.request import FinalOutput, FinishReason, TokenBatch

pytestmark = pytest.mark.ray

MODEL_NAME = "engine-core-test"
PROMPT = list(range(100, 140))
FLUSH_INTERVAL_S = 0.2


@pytest.fixture(scope="module")
def aggregator(ray_session: None) -> Any:
    """Start the aggregator actor or return the running one; typed Any like every actor handle."""
    return start_aggregator()


@pytest.fixture(scope="module")
def engine(aggregator: Any) -> Iterator[Any]:
    config = EngineConfig(
        model="tiny-llama",
        model_name=MODEL_NAME,
        engine=0,
        tp_size=2,
        num_blocks=64,
        block_size=16,
        max_num_batched_tokens=64,
        max_model_len=1024,
        flush_interval_s=FLUSH_INTERVAL_S,
    )
    handle = launch_engine(config)
    ray.get(handle.load.remote(), timeout=120)
    yield handle
    ray.get(handle.shutdown.remote(), timeout=60)
    ray.kill(handle)


def generate(engine: Any, request_id: str, max_tokens: int) -> tuple[list[int], FinalOutput]:
    tokens: list[int] = []
    stream = engine.generate.remote(request_id, PROMPT, max_tokens, ignore_eos=True)
    for ref in stream:
        item = ray.get(ref, timeout=60)
        if isinstance(item, TokenBatch):
            tokens.extend(item.token_ids)
        else:
            return tokens, item
    raise AssertionError(f"stream of {request_id} ended without a FinalOutput")


def scrape(aggregator: Any, sample_name: str, **labels: str) -> float | None:
    """Return this test model's value of one sample, or None while it is missing."""
    body, _ = ray.get(aggregator.scrape.remote("text/plain"))
    for metric in text_string_to_metric_families(body.decode()):
        for sample in metric.samples:
            expected = {"model_name": MODEL_NAME, "engine": "0", **labels}
            if sample.name == sample_name and expected.items() <= sample.labels.items():
                return float(sample.value)
    return None


def test_generates_max_tokens(engine: Any) -> None:
    tokens, final = generate(engine, "full", max_tokens=12)
    assert len(tokens) == 12
    assert final.finish_reason is FinishReason.LENGTH
    assert final.num_output_tokens == 12
    assert final.num_prompt_tokens == 40


def test_repeated_prompt_gives_same_tokens(engine: Any) -> None:
    first, _ = generate(engine, "repeat-1", max_tokens=6)
    second, final = generate(engine, "repeat-2", max_tokens=6)
    assert second == first
    assert final.num_cached_tokens == 32


def settled(aggregator: Any, sample_name: str, **labels: str) -> float:
    """Wait until a sample stops changing for 3 flush intervals, then return it."""
    last = scrape(aggregator, sample_name, **labels)
    while True:
        time.sleep(3 * FLUSH_INTERVAL_S)
        value = scrape(aggregator, sample_name, **labels)
        if value is not None and value == last:
            return value
        last = value


def test_reports_generation_metrics(engine: Any, aggregator: Any) -> None:
    generate(engine, "metrics-1", max_tokens=5)
    tokens_before = settled(aggregator, "vllm:generation_tokens_total")
    length_before = scrape(aggregator, "vllm:request_success_total", finished_reason="length")
    generate(engine, "metrics-2", max_tokens=7)
    wait_for(
        lambda: scrape(aggregator, "vllm:generation_tokens_total") == tokens_before + 7,
        timeout_s=10,
        what="7 more generation tokens in the aggregator",
    )
    length_after = scrape(aggregator, "vllm:request_success_total", finished_reason="length")
    assert length_before is not None
    assert length_after == length_before + 1
    assert scrape(aggregator, "vllm:engine_sleep_state", sleep_state="awake") == 1.0


def test_abort_mid_generation_frees_everything(engine: Any) -> None:
    stream = engine.generate.remote("aborted", PROMPT, 900, ignore_eos=True)
    first = ray.get(next(stream), timeout=60)
    assert isinstance(first, TokenBatch)
    assert ray.get(engine.abort.remote("aborted"), timeout=10)
    items = [ray.get(ref, timeout=60) for ref in stream]
    final = items[-1]
    assert isinstance(final, FinalOutput)
    assert final.finish_reason is FinishReason.ABORT
    assert final.num_output_tokens < 900
    assert ray.get(engine.load.remote()) == 0
    assert ray.get(engine.kv_cache_usage.remote()) == 0.0


def test_abort_unknown_request(engine: Any) -> None:
    assert not ray.get(engine.abort.remote("missing"), timeout=10)


def test_rejects_request_over_max_model_len(engine: Any) -> None:
    stream = engine.generate.remote("too-long", PROMPT, 1000)
    with pytest.raises(ValueError, match=r"40 tokens and max_tokens is 1000.*max_model_len 1024"):
        ray.get(next(stream), timeout=10)


def test_rejects_token_outside_vocabulary(engine: Any) -> None:
    stream = engine.generate.remote("bad-token", [1, 5000], 4)
    with pytest.raises(ValueError, match=r"token ids \[5000\] are outside the vocabulary of 4096"):
        ray.get(next(stream), timeout=10)


def test_cancelled_stream_aborts_request(engine: Any, aggregator: Any) -> None:
    aborted = "vllm:request_success_total"
    before = settled(aggregator, aborted, finished_reason="abort")
    stream = engine.generate.remote("cancelled", PROMPT, 900, ignore_eos=True)
    ray.get(next(stream), timeout=60)
    ray.cancel(stream)
    wait_for(
        lambda: scrape(aggregator, aborted, finished_reason="abort") == before + 1,
        timeout_s=10,
        what="one more aborted request in the aggregator",
    )
    assert ray.get(engine.load.remote()) == 0
    assert ray.get(engine.kv_cache_usage.remote()) == 0.0
