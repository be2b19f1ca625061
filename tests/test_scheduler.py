"""The scheduler without workers: batching, chunked prefill, preemption and request limits."""

from __future__ import annotations

import pytest

from tpmetrics.engine.request import FinishReason, Request, RequestState, SamplingParams
from tpmetrics.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput, UpdateResult
from tpmetrics.workers.step import SequenceChunk, StepOutput

TOKEN = 7
EOS = 2


def make_scheduler(**overrides: int | bool | None) -> Scheduler:
    settings: dict[str, int | bool | None] = {
        "max_num_seqs": 8,
        "max_num_batched_tokens": 64,
        "max_model_len": 256,
        "num_blocks": 32,
        "block_size": 4,
        "eos_token_id": EOS,
    }
    settings.update(overrides)
    return Scheduler(SchedulerConfig(**settings))  # type: ignore[arg-type]


def add(
    scheduler: Scheduler,
    request_id: str,
    num_prompt_tokens: int,
    max_tokens: int,
    *,
    first_token: int = 10,
    ignore_eos: bool = False,
) -> None:
    prompt = [first_token + i for i in range(num_prompt_tokens)]
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos)
    scheduler.add_request(request_id, prompt, params, arrival_time=0.0)


def worker_output(output: SchedulerOutput, token: int = TOKEN) -> list[StepOutput]:
    sampled = {chunk.request_id: token for chunk in output.step_input.chunks if chunk.sample}
    step = output.step_input.step
    return [StepOutput(step, 0, sampled, output.step_input.num_tokens, 0.0, 0.0)]


def run_step(scheduler: Scheduler, token: int = TOKEN) -> tuple[SchedulerOutput, UpdateResult]:
    output = scheduler.schedule()
    return output, scheduler.update(output, worker_output(output, token))


def run_to_completion(scheduler: Scheduler, max_steps: int = 1000) -> list[SchedulerOutput]:
    outputs = []
    while scheduler.has_unfinished_requests():
        outputs.append(run_step(scheduler)[0])
        assert len(outputs) < max_steps
    return outputs


def chunk_sizes(output: SchedulerOutput) -> dict[str, int]:
    return {chunk.request_id: len(chunk.token_ids) for chunk in output.step_input.chunks}


def test_prefill_then_decode() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=5, max_tokens=3)
    first, result = run_step(scheduler)
    chunk = first.step_input.chunks[0]
    assert chunk.token_ids == (10, 11, 12, 13, 14)
    assert chunk.start_position == 0
    assert chunk.sample
    assert result.new_tokens == {"a": TOKEN}
    second, _ = run_step(scheduler)
    assert second.step_input.chunks[0].token_ids == (TOKEN,)
    assert second.step_input.chunks[0].start_position == 5


def test_block_table_covers_chunk() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=9, max_tokens=2)
    output, _ = run_step(scheduler)
    assert len(output.step_input.chunks[0].block_table) == 3


def test_chunked_prefill_spans_steps() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=4)
    add(scheduler, "a", num_prompt_tokens=10, max_tokens=2)
    steps = [run_step(scheduler) for _ in range(3)]
    assert [chunk_sizes(output)["a"] for output, _ in steps] == [4, 4, 2]
    assert [output.step_input.chunks[0].sample for output, _ in steps] == [False, False, True]
    assert [output.step_input.chunks[0].start_position for output, _ in steps] == [0, 4, 8]
    assert [result.new_tokens for _, result in steps] == [{}, {}, {"a": TOKEN}]


def test_steps_are_numbered_from_one() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=3, max_tokens=2)
    outputs = run_to_completion(scheduler)
    assert [output.step_input.step for output in outputs] == [1, 2]


def test_empty_schedule_keeps_step_number() -> None:
    scheduler = make_scheduler()
    output = scheduler.schedule()
    assert output.is_empty
    assert output.step_input.step == 0


def test_decode_before_prefill() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=8)
    add(scheduler, "a", num_prompt_tokens=4, max_tokens=5)
    run_step(scheduler)
    add(scheduler, "b", num_prompt_tokens=20, max_tokens=2)
    output, _ = run_step(scheduler)
    assert [chunk.request_id for chunk in output.step_input.chunks] == ["a", "b"]
    assert chunk_sizes(output) == {"a": 1, "b": 7}


def test_running_prefill_continues_before_waiting() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=6)
    add(scheduler, "a", num_prompt_tokens=10, max_tokens=2)
    add(scheduler, "b", num_prompt_tokens=3, max_tokens=2)
    first, _ = run_step(scheduler)
    second, _ = run_step(scheduler)
    assert chunk_sizes(first) == {"a": 6}
    assert chunk_sizes(second) == {"a": 4, "b": 2}


def test_max_num_seqs_limits_running() -> None:
    scheduler = make_scheduler(max_num_seqs=2)
    for request_id in "abc":
        add(scheduler, request_id, num_prompt_tokens=3, max_tokens=4)
    output, _ = run_step(scheduler)
    assert set(chunk_sizes(output)) == {"a", "b"}
    assert scheduler.num_running == 2
    assert scheduler.num_waiting == 1


def test_finishes_at_max_tokens() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=3, max_tokens=4)
    outputs = run_to_completion(scheduler)
    assert len(outputs) == 4
    assert scheduler.get_request("a") is None


def test_finish_reason_length() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=3, max_tokens=2)
    run_step(scheduler)
    _, result = run_step(scheduler)
    request = result.finished[0]
    assert request.finish_reason is FinishReason.LENGTH
    assert request.state is RequestState.FINISHED
    assert request.output_token_ids == [TOKEN, TOKEN]


def test_eos_finishes_with_stop() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=3, max_tokens=10)
    _, result = run_step(scheduler, token=EOS)
    assert result.finished[0].finish_reason is FinishReason.STOP
    assert result.finished[0].output_token_ids == [EOS]


def test_ignore_eos_runs_to_max_tokens() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=3, max_tokens=3, ignore_eos=True)
    results = [run_step(scheduler, token=EOS)[1] for _ in range(3)]
    assert [len(result.finished) for result in results] == [0, 0, 1]
    assert results[-1].finished[0].finish_reason is FinishReason.LENGTH


def test_no_eos_token_never_stops() -> None:
    scheduler = make_scheduler(eos_token_id=None)
    add(scheduler, "a", num_prompt_tokens=3, max_tokens=2)
    _, result = run_step(scheduler, token=EOS)
    assert result.finished == ()


def test_usage_zero_after_finish() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=9, max_tokens=6)
    add(scheduler, "b", num_prompt_tokens=17, max_tokens=3)
    run_to_completion(scheduler)
    assert scheduler.block_manager.usage == 0.0


def test_abort_running_frees_blocks() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=9, max_tokens=6)
    run_step(scheduler)
    request = scheduler.abort("a")
    assert request is not None
    assert request.finish_reason is FinishReason.ABORT
    assert scheduler.block_manager.usage == 0.0
    assert scheduler.num_running == 0


def test_abort_waiting_request() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=9, max_tokens=6)
    scheduler.abort("a")
    assert scheduler.num_waiting == 0
    assert not scheduler.has_unfinished_requests()


def test_abort_during_step_skips_its_token() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=9, max_tokens=6)
    add(scheduler, "b", num_prompt_tokens=5, max_tokens=6)
    output = scheduler.schedule()
    scheduler.abort("a")
    result = scheduler.update(output, worker_output(output))
    assert result.new_tokens == {"b": TOKEN}
    scheduler.abort("b")
    assert scheduler.block_manager.usage == 0.0


def test_abort_unknown_returns_none() -> None:
    scheduler = make_scheduler()
    assert scheduler.abort("missing") is None


def test_fail_running_finishes_with_error() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=4, max_tokens=6)
    scheduler.schedule()
    failed = scheduler.fail_running()
    assert [request.finish_reason for request in failed] == [FinishReason.ERROR]
    assert scheduler.block_manager.usage == 0.0


def test_fail_all_includes_waiting() -> None:
    scheduler = make_scheduler(max_num_seqs=1)
    add(scheduler, "a", num_prompt_tokens=4, max_tokens=6)
    add(scheduler, "b", num_prompt_tokens=4, max_tokens=6)
    scheduler.schedule()
    failed = scheduler.fail_all()
    assert [request.request_id for request in failed] == ["a", "b"]
    assert not scheduler.has_unfinished_requests()
    assert scheduler.block_manager.usage == 0.0


def test_preempts_last_admitted_when_blocks_run_out() -> None:
    # 4 blocks of 4 tokens: two requests of 8 prompt tokens fill the cache,
    # and the first decode needs a fifth block.
    scheduler = make_scheduler(num_blocks=4, enable_prefix_caching=False)
    add(scheduler, "a", num_prompt_tokens=8, max_tokens=4)
    add(scheduler, "b", num_prompt_tokens=8, max_tokens=4, first_token=50)
    run_step(scheduler)
    output, _ = run_step(scheduler)
    assert chunk_sizes(output) == {"a": 1}
    request = scheduler.get_request("b")
    assert request is not None
    assert request.state is RequestState.PREEMPTED
    assert request.num_preemptions == 1
    assert request.num_computed_tokens == 0


def test_preemption_counted_in_stats() -> None:
    scheduler = make_scheduler(num_blocks=4, enable_prefix_caching=False)
    add(scheduler, "a", num_prompt_tokens=8, max_tokens=4)
    add(scheduler, "b", num_prompt_tokens=8, max_tokens=4, first_token=50)
    run_step(scheduler)
    scheduler.make_stats(None)
    run_step(scheduler)
    stats = scheduler.make_stats(None)
    assert stats.scheduler.num_preemptions == 1
    assert stats.scheduler.num_waiting == 1
    assert scheduler.make_stats(None).scheduler.num_preemptions == 0


def test_preempts_itself_when_last_admitted() -> None:
    # 5 blocks: both prompts take 2, and only the first decode finds a free block.
    scheduler = make_scheduler(num_blocks=5, enable_prefix_caching=False)
    add(scheduler, "a", num_prompt_tokens=8, max_tokens=4)
    add(scheduler, "b", num_prompt_tokens=8, max_tokens=4, first_token=50)
    run_step(scheduler)
    output, _ = run_step(scheduler)
    request = scheduler.get_request("b")
    assert chunk_sizes(output) == {"a": 1}
    assert request is not None
    assert request.state is RequestState.PREEMPTED
    run_to_completion(scheduler)
    assert scheduler.block_manager.usage == 0.0


def test_preempted_request_recomputes_and_finishes() -> None:
    scheduler = make_scheduler(num_blocks=4, enable_prefix_caching=False)
    add(scheduler, "a", num_prompt_tokens=8, max_tokens=4)
    add(scheduler, "b", num_prompt_tokens=8, max_tokens=4, first_token=50)
    run_step(scheduler)
    run_step(scheduler)
    recompute: SequenceChunk | None = None
    finished: list[Request] = []
    while scheduler.has_unfinished_requests():
        output, result = run_step(scheduler)
        finished.extend(result.finished)
        if recompute is None and "b" in chunk_sizes(output):
            recompute = output.step_input.chunks[-1]
    assert recompute is not None
    assert recompute.token_ids == (*range(50, 58), TOKEN)
    assert [request.num_output_tokens for request in finished] == [4, 4]
    assert scheduler.block_manager.usage == 0.0


def test_no_admission_in_step_that_preempts() -> None:
    scheduler = make_scheduler(num_blocks=4, enable_prefix_caching=False)
    add(scheduler, "a", num_prompt_tokens=8, max_tokens=4)
    add(scheduler, "b", num_prompt_tokens=8, max_tokens=4, first_token=50)
    run_step(scheduler)
    output, _ = run_step(scheduler)
    assert "b" not in chunk_sizes(output)


def test_lone_request_never_preempted() -> None:
    scheduler = make_scheduler(num_blocks=3, enable_prefix_caching=False)
    add(scheduler, "a", num_prompt_tokens=8, max_tokens=5)
    run_to_completion(scheduler)
    assert scheduler.block_manager.usage == 0.0


def test_repeated_prompt_hits_prefix_cache() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=20, max_tokens=2)
    run_to_completion(scheduler)
    first = scheduler.make_stats(None).scheduler
    add(scheduler, "b", num_prompt_tokens=20, max_tokens=2)
    output, _ = run_step(scheduler)
    second = scheduler.make_stats(None).scheduler
    assert (first.prefix_cache_queries, first.prefix_cache_hits) == (20, 0)
    assert (second.prefix_cache_queries, second.prefix_cache_hits) == (20, 16)
    assert output.step_input.chunks[0].start_position == 16
    assert output.step_input.chunks[0].token_ids == (26, 27, 28, 29)


def test_cached_tokens_recorded_on_request() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=20, max_tokens=2)
    run_to_completion(scheduler)
    add(scheduler, "b", num_prompt_tokens=20, max_tokens=2)
    run_step(scheduler)
    request = scheduler.get_request("b")
    assert request is not None
    assert request.num_cached_tokens == 16


def test_concurrent_identical_prompts_share_blocks() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=8)
    add(scheduler, "a", num_prompt_tokens=8, max_tokens=4)
    run_step(scheduler)
    add(scheduler, "b", num_prompt_tokens=8, max_tokens=4)
    output, _ = run_step(scheduler)
    table_a, table_b = (chunk.block_table for chunk in output.step_input.chunks)
    assert table_a[0] == table_b[0]


def test_rejects_request_longer_than_max_model_len() -> None:
    scheduler = make_scheduler(max_model_len=100)
    with pytest.raises(ValueError, match=r"60 tokens and max_tokens is 50.*max_model_len 100"):
        add(scheduler, "a", num_prompt_tokens=60, max_tokens=50)


def test_rejects_request_larger_than_cache() -> None:
    scheduler = make_scheduler(num_blocks=2)
    with pytest.raises(ValueError, match="needs 3 KV blocks for 11 tokens"):
        add(scheduler, "a", num_prompt_tokens=8, max_tokens=3)


def test_rejects_duplicate_request_id() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=3, max_tokens=2)
    with pytest.raises(ValueError, match="already in the engine"):
        add(scheduler, "a", num_prompt_tokens=3, max_tokens=2)


def test_rejects_empty_prompt() -> None:
    scheduler = make_scheduler()
    with pytest.raises(ValueError, match="empty prompt"):
        scheduler.add_request("a", [], SamplingParams(max_tokens=2), arrival_time=0.0)


def test_rejects_output_of_other_step() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=3, max_tokens=2)
    output = scheduler.schedule()
    stale = [StepOutput(5, 0, {"a": TOKEN}, 3, 0.0, 0.0)]
    with pytest.raises(ValueError, match="for step 5, expected step 1"):
        scheduler.update(output, stale)


def test_rejects_missing_sample() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=3, max_tokens=2)
    output = scheduler.schedule()
    with pytest.raises(ValueError, match=r"no token for requests \['a'\]"):
        scheduler.update(output, [StepOutput(1, 0, {}, 3, 0.0, 0.0)])


def test_rejects_invalid_config() -> None:
    with pytest.raises(ValueError, match="max_num_seqs must be at least 1, got 0"):
        SchedulerConfig(max_num_seqs=0)
