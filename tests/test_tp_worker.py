"""TP worker actors on the session's local Ray, with gloo on CPU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families
from ray.util.placement_group import PlacementGroup, placement_group_table

from tests.support import wait_for
from tests.test_model import CONFIG, write_checkpoint
from tpmetrics.aggregator.actor import start_aggregator
from tpmetrics.workers.model import random_weights
from tpmetrics.workers.step import SequenceChunk, StepInput, StepOutput
from tpmetrics.workers.tp_worker import TPGroup

pytestmark = pytest.mark.ray

MODEL = "tiny-llama"
BLOCK_SIZE = 16
PROMPT_A = tuple(range(100, 120))
PROMPT_B = tuple(range(3000, 3033))
DECODE_STEPS = 6
TABLE_A = (0, 1, 2, 3)
TABLE_B = (4, 5, 6, 7)


@dataclass
class Run:
    group: TPGroup
    steps: list[list[StepOutput]]
    tokens: dict[str, list[int]]


def schedule_step(step: int, tokens: dict[str, list[int]]) -> StepInput:
    """Build one step of a fixed schedule: prefill a and b (b in two chunks), then decode both."""
    if step == 0:
        chunks = (
            SequenceChunk("a", PROMPT_A, 0, TABLE_A, sample=True),
            SequenceChunk("b", PROMPT_B[:16], 0, TABLE_B, sample=False),
        )
    elif step == 1:
        chunks = (
            decode_chunk("a", PROMPT_A, tokens["a"], TABLE_A),
            SequenceChunk("b", PROMPT_B[16:], 16, TABLE_B, sample=True),
        )
    else:
        chunks = (
            decode_chunk("a", PROMPT_A, tokens["a"], TABLE_A),
            decode_chunk("b", PROMPT_B, tokens["b"], TABLE_B),
        )
    return StepInput(step=step, chunks=chunks)


def decode_chunk(
    request_id: str, prompt: tuple[int, ...], generated: list[int], table: tuple[int, ...]
) -> SequenceChunk:
    position = len(prompt) + len(generated) - 1
    return SequenceChunk(request_id, (generated[-1],), position, table, sample=True)


def generate(tp_size: int, **options: object) -> Run:
    group = TPGroup.create(
        MODEL,
        tp_size,
        model_name=str(options.get("model_name", "tp-worker-test")),
        engine=0,
        num_blocks=16,
        block_size=BLOCK_SIZE,
        seed=7,
        report_metrics=bool(options.get("report_metrics", False)),
        flush_interval_s=0.2,
    )
    tokens: dict[str, list[int]] = {"a": [], "b": []}
    steps: list[list[StepOutput]] = []
    try:
        for step in range(DECODE_STEPS + 2):
            outputs = group.execute_step(schedule_step(step, tokens))
            steps.append(outputs)
            for request_id, token in outputs[0].sampled.items():
                tokens[request_id].append(token)
    finally:
        group.shutdown()
    return Run(group, steps, tokens)


@pytest.fixture(scope="module")
def tp1(ray_session: None) -> Run:
    return generate(1)


@pytest.fixture(scope="module")
def tp2(ray_session: None) -> Run:
    return generate(2)


def placement_state(handle: PlacementGroup) -> str:
    state: str = placement_group_table(handle)["state"]
    return state


def test_tp2_tokens_match_tp1(tp1: Run, tp2: Run) -> None:
    assert len(tp1.tokens["a"]) == DECODE_STEPS + 2
    assert len(tp1.tokens["b"]) == DECODE_STEPS + 1
    assert tp2.tokens == tp1.tokens


def test_tp2_ranks_agree(tp2: Run) -> None:
    for outputs in tp2.steps:
        assert outputs[1].sampled == outputs[0].sampled


def test_outputs_in_rank_order(tp2: Run) -> None:
    assert [output.rank for output in tp2.steps[0]] == [0, 1]


def test_outputs_count_step_tokens(tp2: Run) -> None:
    assert [output.num_tokens for output in tp2.steps[0]] == [36, 36]
    assert [output.num_tokens for output in tp2.steps[1]] == [18, 18]
    assert [output.step for output in tp2.steps[1]] == [1, 1]


def test_tp2_collective_time_positive(tp2: Run) -> None:
    for outputs in tp2.steps:
        for output in outputs:
            assert output.collective_time_s > 0.0, f"step {output.step} rank {output.rank}"
            assert output.forward_time_s > 0.0, f"step {output.step} rank {output.rank}"


def test_tp1_collective_time_zero(tp1: Run) -> None:
    assert {outputs[0].collective_time_s for outputs in tp1.steps} == {0.0}


def test_shutdown_removes_placement_group(tp1: Run, tp2: Run) -> None:
    wait_for(lambda: placement_state(tp1.group.placement_group) == "REMOVED", what="TP 1 removal")
    wait_for(lambda: placement_state(tp2.group.placement_group) == "REMOVED", what="TP 2 removal")


def test_shutdown_twice_is_noop(tp2: Run) -> None:
    tp2.group.shutdown()
    assert placement_state(tp2.group.placement_group) == "REMOVED"


def test_step_after_shutdown_rejected(tp2: Run) -> None:
    with pytest.raises(RuntimeError, match="the TP group is shut down"):
        tp2.group.execute_step(schedule_step(0, {}))


def test_tp_size_must_divide_heads(ray_session: None) -> None:
    with pytest.raises(ValueError, match=r"TP size 3 does not divide num_heads 4"):
        TPGroup.create(MODEL, 3, model_name="tp-worker-test", engine=0, num_blocks=4, block_size=16)


def test_empty_kv_cache_rejected(ray_session: None) -> None:
    with pytest.raises(
        ValueError, match=r"num_blocks and block_size must be at least 1, got 0 and 16"
    ):
        TPGroup.create(MODEL, 1, model_name="tp-worker-test", engine=0, num_blocks=0, block_size=16)


def live_placement_groups() -> set[str]:
    table: dict[str, dict[str, Any]] = placement_group_table()
    return {group_id for group_id, entry in table.items() if entry["state"] != "REMOVED"}


def test_setup_failure_removes_placement_group(ray_session: None, tmp_path: Path) -> None:
    tensors = random_weights(CONFIG, seed=0)
    del tensors["model.norm.weight"]
    write_checkpoint(tmp_path, CONFIG, tensors)
    before = live_placement_groups()
    with pytest.raises(ValueError, match=r"has no tensor 'model\.norm\.weight'"):
        TPGroup.create(
            str(tmp_path), 1, model_name="tp-worker-test", engine=0, num_blocks=4, block_size=16
        )
    wait_for(lambda: live_placement_groups() == before, what="placement group removal")


@pytest.fixture
def aggregator(ray_session: None) -> Any:
    """Start the aggregator actor or return the running one.

    The handle is typed Any because mypy cannot type the remote methods of a Ray actor handle.
    """
    return start_aggregator()


def scrape(handle: Any, family: str, sample_name: str) -> dict[str, float]:
    """Return the value of each rank's sample of `family` for this test's model."""
    reply: tuple[bytes, str] = ray.get(handle.scrape.remote("text/plain"))
    body = reply[0]
    values: dict[str, float] = {}
    for metric in text_string_to_metric_families(body.decode()):
        if metric.name != family:
            continue
        for sample in metric.samples:
            if sample.name == sample_name and sample.labels["model_name"] == "tp-worker-metrics":
                values[sample.labels["rank"]] = sample.value
    return values


def test_ranks_report_metrics(aggregator: Any) -> None:
    generate(2, report_metrics=True, model_name="tp-worker-metrics")
    steps = float(DECODE_STEPS + 2)
    tokens = float(36 + 18 + 2 * DECODE_STEPS)
    assert scrape(aggregator, "tpmetrics:rank_steps", "tpmetrics:rank_steps_total") == {
        "0": steps,
        "1": steps,
    }
    assert scrape(aggregator, "tpmetrics:rank_tokens", "tpmetrics:rank_tokens_total") == {
        "0": tokens,
        "1": tokens,
    }
    collective_counts = scrape(
        aggregator,
        "tpmetrics:rank_collective_time_seconds",
        "tpmetrics:rank_collective_time_seconds_count",
    )
    assert collective_counts == {"0": steps, "1": steps}
