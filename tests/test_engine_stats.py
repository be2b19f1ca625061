"""Engine stats: vLLM's token counts and intervals, and their mapping to families."""

from __future__ import annotations

from tpmetrics.catalog import Catalog, CatalogConfig
from tpmetrics.engine.request import FinishReason, SamplingParams
from tpmetrics.engine.scheduler import Scheduler, SchedulerConfig
from tpmetrics.engine.stats import (
    CacheConfigInfo,
    FinishedRequestStats,
    IterationStats,
    RequestTimes,
    SchedulerStats,
    SeriesKey,
    StatsRecorder,
    StepStats,
    initial_record,
    step_record,
)
from tpmetrics.snapshot import HistogramValue, SourceId, SourceKind
from tpmetrics.workers.reporter import Reporter
from tpmetrics.workers.step import StepOutput

TOKEN = 7
ARRIVAL = 1000.0


class FakeClock:
    """A clock that returns `now`, which only the test changes."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_scheduler(
    clock: FakeClock | None = None,
    wall_clock: FakeClock | None = None,
    **overrides: int | bool,
) -> Scheduler:
    settings: dict[str, int | bool] = {
        "max_num_batched_tokens": 64,
        "num_blocks": 64,
        "block_size": 4,
    }
    settings.update(overrides)
    config = SchedulerConfig(**settings)  # type: ignore[arg-type]
    return Scheduler(config, clock or FakeClock(0.0), wall_clock or FakeClock(ARRIVAL))


def add(scheduler: Scheduler, request_id: str, num_prompt_tokens: int, max_tokens: int) -> None:
    prompt = list(range(10, 10 + num_prompt_tokens))
    scheduler.add_request(request_id, prompt, SamplingParams(max_tokens=max_tokens), ARRIVAL)


def run_step(scheduler: Scheduler) -> StepStats:
    output = scheduler.schedule()
    sampled = {chunk.request_id: TOKEN for chunk in output.step_input.chunks if chunk.sample}
    worker = StepOutput(output.step_input.step, 0, sampled, output.step_input.num_tokens, 0.0, 0.0)
    result = scheduler.update(output, [worker])
    return scheduler.make_stats(result.iteration)


def run_all(scheduler: Scheduler) -> list[StepStats]:
    steps = []
    while scheduler.has_unfinished_requests():
        steps.append(run_step(scheduler))
    return steps


def iteration(stats: StepStats) -> IterationStats:
    assert stats.iteration is not None
    return stats.iteration


def test_iteration_tokens_sum_prompt_and_output() -> None:
    scheduler = make_scheduler(enable_prefix_caching=False)
    steps = []
    for index in range(3):
        add(scheduler, f"r{index}", num_prompt_tokens=20, max_tokens=5)
        steps.extend(run_all(scheduler))
    assert sum(iteration(stats).num_iteration_tokens for stats in steps) == 3 * (20 + 5)


def test_iteration_tokens_exclude_cached_prompt() -> None:
    scheduler = make_scheduler()
    steps = []
    for index in range(3):
        add(scheduler, f"r{index}", num_prompt_tokens=20, max_tokens=5)
        steps.extend(run_all(scheduler))
    assert sum(iteration(stats).num_iteration_tokens for stats in steps) == 3 * 25 - 2 * 16


def test_prompt_tokens_count_at_first_token() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=4, enable_prefix_caching=False)
    add(scheduler, "a", num_prompt_tokens=10, max_tokens=2)
    steps = [iteration(stats) for stats in run_all(scheduler)]
    assert [stats.num_prompt_tokens for stats in steps] == [0, 0, 10, 0]
    assert [stats.num_iteration_tokens for stats in steps] == [0, 0, 11, 1]


def test_prompt_tokens_split_by_source() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=20, max_tokens=1)
    run_all(scheduler)
    add(scheduler, "b", num_prompt_tokens=20, max_tokens=1)
    stats = iteration(run_step(scheduler))
    assert stats.num_prompt_tokens == 20
    assert stats.num_prompt_tokens_cached == 16
    assert stats.num_prompt_tokens_computed == 4


def test_generation_tokens_one_per_output() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=5, max_tokens=4)
    add(scheduler, "b", num_prompt_tokens=5, max_tokens=2)
    steps = run_all(scheduler)
    assert [iteration(stats).num_generation_tokens for stats in steps] == [2, 2, 1, 1]


def test_one_itl_per_decode_output() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=5, max_tokens=4)
    steps = [iteration(stats) for stats in run_all(scheduler)]
    assert [len(stats.time_to_first_tokens) for stats in steps] == [1, 0, 0, 0]
    assert [len(stats.inter_token_latencies) for stats in steps] == [0, 1, 1, 1]


def test_recompute_after_preemption_adds_no_prompt_tokens() -> None:
    scheduler = make_scheduler(num_blocks=4, enable_prefix_caching=False)
    add(scheduler, "a", num_prompt_tokens=8, max_tokens=4)
    add(scheduler, "b", num_prompt_tokens=8, max_tokens=4)
    steps = run_all(scheduler)
    assert sum(iteration(stats).num_prompt_tokens for stats in steps) == 16
    assert sum(iteration(stats).num_generation_tokens for stats in steps) == 8
    assert sum(stats.scheduler.num_preemptions for stats in steps) == 1


def test_intervals_exact() -> None:
    clock, wall = FakeClock(10.0), FakeClock(ARRIVAL)
    scheduler = make_scheduler(clock, wall)
    add(scheduler, "a", num_prompt_tokens=5, max_tokens=3)
    token_times = [(12.0, 13.0, 1003.5), (14.0, 15.5, 1005.0), (16.0, 17.5, 1010.0)]
    steps = []
    for schedule_at, update_at, wall_at in token_times:
        clock.now = schedule_at
        output = scheduler.schedule()
        clock.now, wall.now = update_at, wall_at
        worker = StepOutput(output.step_input.step, 0, {"a": TOKEN}, 1, 0.0, 0.0)
        steps.append(scheduler.make_stats(scheduler.update(output, [worker]).iteration))
    assert iteration(steps[0]).time_to_first_tokens == (3.5,)
    assert iteration(steps[1]).inter_token_latencies == (2.5,)
    assert iteration(steps[2]).inter_token_latencies == (2.0,)
    times = steps[2].finished[0].times
    assert times.e2e == 10.0
    assert times.queued == 2.0
    assert times.prefill == 1.0
    assert times.decode == 4.5
    assert times.inference == 5.5
    assert times.mean_time_per_output_token == 2.25


def test_single_token_request_has_zero_tpot() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=5, max_tokens=1)
    finished = run_all(scheduler)[0].finished[0]
    assert finished.times.mean_time_per_output_token == 0.0
    assert finished.times.decode == 0.0


def test_abort_before_scheduling_has_no_times() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=5, max_tokens=3)
    scheduler.abort("a")
    stats = scheduler.make_stats(None)
    assert stats.finished[0].finish_reason is FinishReason.ABORT
    assert stats.finished[0].times == RequestTimes(None, None, None, None, None, None)


def test_abort_before_first_token_has_queue_time_only() -> None:
    clock = FakeClock(1.0)
    scheduler = make_scheduler(clock, max_num_batched_tokens=4)
    add(scheduler, "a", num_prompt_tokens=10, max_tokens=3)
    clock.now = 1.5
    scheduler.schedule()
    scheduler.abort("a")
    times = scheduler.make_stats(None).finished[0].times
    assert times == RequestTimes(None, 0.5, None, None, None, None)


def test_finished_stats_counts() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=20, max_tokens=1)
    run_all(scheduler)
    add(scheduler, "b", num_prompt_tokens=20, max_tokens=3)
    finished = next(stats.finished for stats in run_all(scheduler) if stats.finished)[0]
    assert finished.finish_reason is FinishReason.LENGTH
    assert finished.num_prompt_tokens == 20
    assert finished.num_generation_tokens == 3
    assert finished.num_cached_tokens == 16
    assert finished.num_prefill_kv_computed_tokens == 4
    assert finished.max_tokens_param == 3
    assert finished.n_param == 1


def test_kv_usage_in_stats_returns_to_zero() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=9, max_tokens=3)
    steps = run_all(scheduler)
    assert steps[0].scheduler.kv_cache_usage == 3 / 64
    assert steps[-1].scheduler.kv_cache_usage == 0.0


def test_kv_usage_zero_after_abort() -> None:
    scheduler = make_scheduler()
    add(scheduler, "a", num_prompt_tokens=9, max_tokens=3)
    run_step(scheduler)
    scheduler.abort("a")
    assert scheduler.make_stats(None).scheduler.kv_cache_usage == 0.0


CACHE_INFO = CacheConfigInfo(block_size=16, num_gpu_blocks=100, enable_prefix_caching=True)


def finished_stats(times: RequestTimes, n_param: int | None = 1) -> FinishedRequestStats:
    return FinishedRequestStats(
        finish_reason=FinishReason.STOP,
        num_prompt_tokens=20,
        num_generation_tokens=5,
        num_cached_tokens=16,
        num_preemptions=1,
        max_tokens_param=8,
        n_param=n_param,
        times=times,
    )


ALL_TIMES = RequestTimes(10.0, 2.0, 1.0, 4.5, 5.5, 1.125)
NO_TIMES = RequestTimes(None, None, None, None, None, None)
SCHEDULER = SchedulerStats(3, 2, 0, 0.25, 20, 16, 1)


def key(family: str, **labels: str) -> SeriesKey:
    return SeriesKey(family, tuple(labels.items()))


def test_record_scheduler_values() -> None:
    record = step_record(StepStats(4, SCHEDULER, None, ()))
    gauges = dict(record.gauges)
    counters = dict(record.counters)
    assert record.step == 4
    assert gauges[key("vllm:num_requests_running")] == 3
    assert gauges[key("vllm:num_requests_waiting")] == 2
    assert gauges[key("vllm:num_requests_waiting_by_reason", reason="capacity")] == 2
    assert gauges[key("vllm:num_requests_waiting_by_reason", reason="deferred")] == 0
    assert gauges[key("vllm:kv_cache_usage_perc")] == 0.25
    assert counters[key("vllm:prefix_cache_queries")] == 20
    assert counters[key("vllm:prefix_cache_hits")] == 16
    assert counters[key("vllm:num_preemptions")] == 1


def test_record_without_iteration_observes_nothing() -> None:
    record = step_record(StepStats(4, SCHEDULER, None, ()))
    assert record.observations == ()


def test_record_iteration_values() -> None:
    stats = IterationStats(20, 4, 16, 3, (0.5,), (0.25, 0.125))
    record = step_record(StepStats(1, SCHEDULER, stats, ()))
    counters = dict(record.counters)
    assert counters[key("vllm:prompt_tokens")] == 20
    assert counters[key("vllm:prompt_tokens_by_source", source="local_compute")] == 4
    assert counters[key("vllm:prompt_tokens_by_source", source="local_cache_hit")] == 16
    assert counters[key("vllm:prompt_tokens_by_source", source="external_kv_transfer")] == 0
    assert counters[key("vllm:prompt_tokens_cached")] == 16
    assert counters[key("vllm:generation_tokens")] == 3
    assert record.observations == (
        (key("vllm:iteration_tokens_total"), 7),
        (key("vllm:time_to_first_token_seconds"), 0.5),
        (key("vllm:inter_token_latency_seconds"), 0.25),
        (key("vllm:time_per_output_token_seconds"), 0.25),
        (key("vllm:inter_token_latency_seconds"), 0.125),
        (key("vllm:time_per_output_token_seconds"), 0.125),
    )


def test_record_finished_request() -> None:
    record = step_record(StepStats(1, SCHEDULER, None, (finished_stats(ALL_TIMES),)))
    assert (key("vllm:request_success", finished_reason="stop"), 1) in record.counters
    assert dict(record.observations) == {
        key("vllm:e2e_request_latency_seconds"): 10.0,
        key("vllm:request_queue_time_seconds"): 2.0,
        key("vllm:request_prefill_time_seconds"): 1.0,
        key("vllm:request_decode_time_seconds"): 4.5,
        key("vllm:request_inference_time_seconds"): 5.5,
        key("vllm:request_time_per_output_token_seconds"): 1.125,
        key("vllm:request_num_preemptions"): 1,
        key("vllm:request_prefill_kv_computed_tokens"): 4,
        key("vllm:request_prompt_tokens"): 20,
        key("vllm:request_generation_tokens"): 5,
        key("vllm:request_max_num_generation_tokens"): 5,
        key("vllm:request_params_n"): 1,
        key("vllm:request_params_max_tokens"): 8,
    }


def test_record_skips_missing_times_and_n() -> None:
    record = step_record(StepStats(1, SCHEDULER, None, (finished_stats(NO_TIMES, None),)))
    families = {series.family for series, _ in record.observations}
    assert "vllm:e2e_request_latency_seconds" not in families
    assert "vllm:request_params_n" not in families
    assert "vllm:request_max_num_generation_tokens" not in families
    assert "vllm:request_prompt_tokens" in families


def test_initial_record_creates_every_finish_reason() -> None:
    counters = dict(initial_record(CACHE_INFO).counters)
    for reason in ("stop", "length", "abort", "error"):
        assert counters[key("vllm:request_success", finished_reason=reason)] == 0


def test_initial_record_gauges() -> None:
    gauges = dict(initial_record(CACHE_INFO).gauges)
    assert gauges[key("vllm:num_requests_running")] == 0
    assert gauges[key("vllm:kv_cache_usage_perc")] == 0
    assert gauges[key("vllm:engine_sleep_state", sleep_state="awake")] == 1
    assert gauges[key("vllm:engine_sleep_state", sleep_state="discard_all")] == 0
    assert gauges[SeriesKey("vllm:cache_config_info", CACHE_INFO.labels())] == 1


def test_cache_config_labels() -> None:
    labels = dict(CACHE_INFO.labels())
    assert labels["kv_cache_size_tokens"] == "1600"
    assert labels["enable_prefix_caching"] == "True"
    assert labels["prefix_caching_hash_algo"] == "sha256"


def make_reporter(show_hidden: str | None = None) -> Reporter:
    catalog = Catalog(CatalogConfig(max_model_len=256, show_hidden_metrics_for_version=show_hidden))
    return Reporter(SourceId(SourceKind.ENGINE, "m", engine=1), catalog)


def sample_values(reporter: Reporter) -> dict[tuple[str, tuple[str, ...]], object]:
    snapshot = reporter.snapshot(full=True)
    return {(sample.family, sample.labels): sample.value for sample in snapshot.samples}


def test_recorder_creates_series_before_traffic() -> None:
    reporter = make_reporter()
    StatsRecorder(reporter, CACHE_INFO)
    values = sample_values(reporter)
    assert values[("vllm:request_success", ("m", "1", "abort"))] == 0
    assert values[("vllm:engine_sleep_state", ("m", "1", "awake"))] == 1
    assert ("vllm:time_to_first_token_seconds", ("m", "1")) in values
    assert reporter.snapshot().step == 0


def test_recorder_records_step() -> None:
    reporter = make_reporter()
    recorder = StatsRecorder(reporter, CACHE_INFO)
    stats = IterationStats(20, 4, 16, 3, (0.5,), (0.25,))
    recorder.record(StepStats(9, SCHEDULER, stats, (finished_stats(ALL_TIMES),)))
    values = sample_values(reporter)
    iteration_tokens = values[("vllm:iteration_tokens_total", ("m", "1"))]
    assert isinstance(iteration_tokens, HistogramValue)
    assert iteration_tokens.sum == 7
    assert values[("vllm:num_requests_running", ("m", "1"))] == 3
    assert values[("vllm:request_success", ("m", "1", "stop"))] == 1
    assert values[("vllm:prompt_tokens", ("m", "1"))] == 20
    assert reporter.snapshot().step == 9


def test_recorder_skips_hidden_families() -> None:
    reporter = make_reporter()
    recorder = StatsRecorder(reporter, CACHE_INFO)
    recorder.record(StepStats(1, SCHEDULER, IterationStats(0, 0, 0, 1, (), (0.25,)), ()))
    families = {family for family, _ in sample_values(reporter)}
    assert "vllm:time_per_output_token_seconds" not in families


def test_recorder_fills_shown_deprecated_family() -> None:
    reporter = make_reporter(show_hidden="0.11")
    recorder = StatsRecorder(reporter, CACHE_INFO)
    recorder.record(StepStats(1, SCHEDULER, IterationStats(0, 0, 0, 1, (), (0.25,)), ()))
    value = sample_values(reporter)[("vllm:time_per_output_token_seconds", ("m", "1"))]
    assert isinstance(value, HistogramValue)
    assert value.sum == 0.25
