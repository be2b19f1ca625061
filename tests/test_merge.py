"""The merge rules, on the pure merge state: exact merged values after each snapshot."""

from __future__ import annotations

import math

import pytest

from tests.merge_support import MODEL, engine, frontend, rank, scrape, scrape_text, value
from tpmetrics.aggregator.state import MergeState
from tpmetrics.catalog import Catalog, CatalogConfig
from tpmetrics.snapshot import HistogramValue, Sample, Snapshot, SourceId
from tpmetrics.workers.reporter import Reporter

ENGINE0 = {"model_name": MODEL, "engine": "0"}
ITERATION_BOUNDS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def snapshot(
    source: SourceId, incarnation: str, seq: int, samples: list[Sample], step: int = 0
) -> Snapshot:
    return Snapshot(source, incarnation, seq, step, tuple(samples))


def counter(name: str, amount: float, **labels: str) -> Sample:
    return Sample(name, (MODEL, labels.get("engine", "0"), *labels.get("extra", ())), amount)


def test_engine_step_counted_once_across_ranks() -> None:
    state = MergeState()
    catalog = Catalog()
    reporters = [Reporter(rank(0, r), catalog) for r in range(2)]
    for reporter in reporters:
        tokens = reporter.series("vllm:iteration_tokens_total")
        reporter.record(step=1, observations=[(tokens, 128)])
    first = reporters[0].snapshot()
    state.apply(first, now=0.0)
    state.apply(reporters[1].snapshot(), now=0.0)
    state.apply(first, now=0.0)
    samples = scrape(state, now=0.0)

    assert value(samples, "vllm:iteration_tokens_total_count", **ENGINE0) == 1
    assert value(samples, "vllm:iteration_tokens_total_sum", **ENGINE0) == 128
    for bound in ITERATION_BOUNDS:
        bucket = value(samples, "vllm:iteration_tokens_total_bucket", **ENGINE0, le=f"{bound}.0")
        assert bucket == (1 if bound >= 128 else 0), f"le={bound}"
    assert value(samples, "vllm:iteration_tokens_total_bucket", **ENGINE0, le="+Inf") == 1


def test_engine_gauges_not_summed_across_ranks() -> None:
    state = MergeState()
    catalog = Catalog()
    for r in range(4):
        reporter = Reporter(rank(0, r), catalog)
        reporter.record(
            step=7,
            gauges=[
                (reporter.series("vllm:num_requests_running"), 5),
                (reporter.series("vllm:num_requests_waiting"), 2),
                (reporter.series("vllm:kv_cache_usage_perc"), 0.40),
            ],
        )
        state.apply(reporter.snapshot(), now=0.0)
    samples = scrape(state, now=0.0)

    assert value(samples, "vllm:num_requests_running", **ENGINE0) == 5
    assert value(samples, "vllm:num_requests_waiting", **ENGINE0) == 2
    assert value(samples, "vllm:kv_cache_usage_perc", **ENGINE0) == 0.40


def test_histogram_restart_keeps_buckets_monotonic() -> None:
    config = CatalogConfig(custom_buckets={"request_params_n": (1.0,)})
    state = MergeState(config)
    name = "vllm:request_params_n"

    def report(source: SourceId, incarnation: str, seq: int, counts: tuple[float, float]) -> None:
        histogram = HistogramValue((1.0,), counts, sum=counts[0] * 1 + counts[1] * 3)
        state.apply(
            snapshot(source, incarnation, seq, [Sample(name, (MODEL, "0"), histogram)]), 0.0
        )

    def merged() -> tuple[float | None, float | None, float | None]:
        samples = scrape(state, now=0.0)
        return (
            value(samples, f"{name}_bucket", **ENGINE0, le="1.0"),
            value(samples, f"{name}_bucket", **ENGINE0, le="+Inf"),
            value(samples, f"{name}_count", **ENGINE0),
        )

    report(frontend(0), "a", 1, (10, 0))
    report(frontend(1), "b1", 1, (1, 0))
    assert merged() == (11, 11, 11)
    report(frontend(1), "b2", 1, (0, 1))
    assert merged() == (11, 12, 12)
    report(frontend(0), "a", 2, (15, 0))
    assert merged() == (16, 17, 17)


def test_counter_restart_never_decreases() -> None:
    state = MergeState()
    name = "vllm:prompt_tokens"

    def report(incarnation: str, seq: int, amount: float) -> None:
        state.apply(
            snapshot(engine(0), incarnation, seq, [Sample(name, (MODEL, "0"), amount)]), 0.0
        )

    def merged() -> float | None:
        return value(scrape(state, now=0.0), "vllm:prompt_tokens_total", **ENGINE0)

    report("first", 1, 800)
    assert merged() == 800
    report("second", 1, 0)
    assert merged() == 800
    report("second", 2, 120)
    assert merged() == 920


def test_negative_count_rejected_and_counted() -> None:
    state = MergeState()
    good = Sample("vllm:generation_tokens", (MODEL, "0"), 7)
    bad = Sample("vllm:prompt_tokens", (MODEL, "0"), -3)
    reply = state.apply(snapshot(engine(0), "a", 1, [good, bad]), now=0.0)
    samples = scrape(state, now=0.0)

    assert reply.accepted == 1
    assert reply.rejected == (
        "invalid value for counter vllm:prompt_tokens: counts cannot be negative, got -3",
    )
    assert (
        value(samples, "tpmetrics_samples_rejected_total", model_name=MODEL, reason="negative") == 1
    )
    assert value(samples, "vllm:generation_tokens_total", **ENGINE0) == 7
    assert value(samples, "vllm:prompt_tokens_total", **ENGINE0) is None


def test_bucket_bounds_mismatch_rejected() -> None:
    state = MergeState()
    name = "vllm:request_params_n"
    expected = (1.0, 2.0, 5.0, 10.0, 20.0)
    first = Sample(name, (MODEL, "0"), HistogramValue(expected, (1, 0, 0, 0, 0, 0), 1.0))
    other = Sample(name, (MODEL, "0"), HistogramValue((1.0, 4.0), (0, 3, 0), 9.0))
    state.apply(snapshot(frontend(0), "a", 1, [first]), now=0.0)
    reply = state.apply(snapshot(frontend(1), "b", 1, [other]), now=0.0)
    samples = scrape(state, now=0.0)

    assert reply.rejected == (
        "invalid bucket bounds for vllm:request_params_n: "
        "expected [1.0, 2.0, 5.0, 10.0, 20.0], got [1.0, 4.0]",
    )
    assert value(samples, f"{name}_count", **ENGINE0) == 1
    assert value(samples, f"{name}_sum", **ENGINE0) == 1.0


def test_nan_observation_dropped_by_reporter() -> None:
    state = MergeState()
    reporter = Reporter(engine(0), Catalog())
    ttft = reporter.series("vllm:time_to_first_token_seconds")
    reporter.record(step=1, observations=[(ttft, 0.5), (ttft, math.nan), (ttft, 0.25)])
    state.apply(reporter.snapshot(), now=0.0)
    samples = scrape(state, now=0.0)

    assert reporter.dropped_observations == 1
    assert value(samples, "vllm:time_to_first_token_seconds_count", **ENGINE0) == 2
    assert value(samples, "vllm:time_to_first_token_seconds_sum", **ENGINE0) == 0.75


def test_nan_sum_rejected_by_aggregator() -> None:
    state = MergeState()
    name = "vllm:request_params_n"
    bounds = (1.0, 2.0, 5.0, 10.0, 20.0)
    good = HistogramValue(bounds, (2, 0, 0, 0, 0, 0), 2.0)
    bad = HistogramValue(bounds, (3, 0, 0, 0, 0, 0), math.nan)
    state.apply(snapshot(engine(0), "a", 1, [Sample(name, (MODEL, "0"), good)]), now=0.0)
    reply = state.apply(snapshot(engine(0), "a", 2, [Sample(name, (MODEL, "0"), bad)]), now=0.0)
    samples = scrape(state, now=0.0)

    assert reply.accepted == 0
    assert value(samples, f"{name}_count", **ENGINE0) == 2
    assert value(samples, f"{name}_sum", **ENGINE0) == 2.0
    assert (
        value(samples, "tpmetrics_samples_rejected_total", model_name=MODEL, reason="not_finite")
        == 1
    )


def test_decreasing_counter_rejected_within_incarnation() -> None:
    state = MergeState()
    name = "vllm:prompt_tokens"
    state.apply(snapshot(engine(0), "a", 1, [Sample(name, (MODEL, "0"), 50)]), now=0.0)
    reply = state.apply(snapshot(engine(0), "a", 2, [Sample(name, (MODEL, "0"), 40)]), now=0.0)

    assert reply.accepted == 0
    assert value(scrape(state, 0.0), "vllm:prompt_tokens_total", **ENGINE0) == 50


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        (Sample("vllm:no_such_family", (MODEL, "0"), 1), "unknown_family"),
        (Sample("vllm:prompt_tokens", (MODEL, "0"), "12"), "wrong_type"),
        (Sample("vllm:prompt_tokens", (MODEL,), 1), "wrong_labels"),
        (Sample("vllm:prompt_tokens", ("other-model", "0"), 1), "wrong_labels"),
        (Sample("vllm:prompt_tokens", (MODEL, "1"), 1), "wrong_labels"),
        (Sample("tpmetrics:tp_step_time_skew_ratio", (MODEL, "0"), 1), "derived_family"),
        (Sample("vllm:num_requests_running", (MODEL, "0"), math.inf), "not_finite"),
    ],
)
def test_invalid_sample_rejected_alone(sample: Sample, reason: str) -> None:
    state = MergeState()
    good = Sample("vllm:generation_tokens", (MODEL, "0"), 3)
    reply = state.apply(snapshot(engine(0), "a", 1, [sample, good]), now=0.0)
    samples = scrape(state, now=0.0)

    assert reply.accepted == 1
    assert value(samples, "tpmetrics_samples_rejected_total", model_name=MODEL, reason=reason) == 1
    assert value(samples, "vllm:generation_tokens_total", **ENGINE0) == 3


def test_stale_snapshot_rejected() -> None:
    state = MergeState()
    name = "vllm:prompt_tokens"
    state.apply(snapshot(engine(0), "a", 2, [Sample(name, (MODEL, "0"), 20)]), now=0.0)
    reply = state.apply(snapshot(engine(0), "a", 1, [Sample(name, (MODEL, "0"), 10)]), now=0.0)
    samples = scrape(state, now=0.0)

    assert reply.accepted == 0
    assert value(samples, "vllm:prompt_tokens_total", **ENGINE0) == 20
    assert (
        value(samples, "tpmetrics_snapshots_rejected_total", model_name=MODEL, reason="stale") == 1
    )


def test_late_snapshot_of_replaced_incarnation_rejected() -> None:
    state = MergeState()
    name = "vllm:prompt_tokens"
    state.apply(snapshot(engine(0), "old", 1, [Sample(name, (MODEL, "0"), 20)]), now=0.0)
    state.apply(snapshot(engine(0), "new", 1, [Sample(name, (MODEL, "0"), 5)]), now=0.0)
    reply = state.apply(snapshot(engine(0), "old", 2, [Sample(name, (MODEL, "0"), 30)]), now=0.0)

    assert reply.accepted == 0
    assert value(scrape(state, 0.0), "vllm:prompt_tokens_total", **ENGINE0) == 25


def test_engine_restart_counts_old_and_new_steps_once() -> None:
    state = MergeState()
    name = "vllm:generation_tokens"

    def report(r: int, incarnation: str, seq: int, step: int, amount: float) -> None:
        sample = Sample(name, (MODEL, "0"), amount)
        state.apply(snapshot(rank(0, r), incarnation, seq, [sample], step=step), now=0.0)

    def merged() -> float | None:
        return value(scrape(state, 0.0), "vllm:generation_tokens_total", **ENGINE0)

    report(0, "r0", 1, step=10, amount=10)
    report(1, "r1", 1, step=8, amount=8)
    assert merged() == 10
    report(0, "r0-new", 1, step=1, amount=1)
    assert merged() == 11
    report(1, "r1", 2, step=10, amount=10)
    assert merged() == 11
    report(1, "r1-new", 1, step=2, amount=2)
    assert merged() == 12
    report(0, "r0-new", 2, step=2, amount=2)
    assert merged() == 12


def test_gauge_expires_after_ttl_counter_stays() -> None:
    state = MergeState(gauge_ttl_s=3.0)
    running = Sample("vllm:num_requests_running", (MODEL, "0"), 4)
    tokens = Sample("vllm:prompt_tokens", (MODEL, "0"), 9)
    state.apply(snapshot(engine(0), "a", 1, [running, tokens]), now=100.0)
    fresh = scrape(state, now=102.0)
    expired = scrape(state, now=104.0)

    assert value(fresh, "vllm:num_requests_running", **ENGINE0) == 4
    assert value(expired, "vllm:num_requests_running", **ENGINE0) is None
    assert value(expired, "vllm:prompt_tokens_total", **ENGINE0) == 9
    assert value(expired, "tpmetrics_live_sources", model_name=MODEL, kind="engine") is None


def test_gauge_stays_while_source_reports_other_series() -> None:
    state = MergeState(gauge_ttl_s=3.0)
    running = Sample("vllm:num_requests_running", (MODEL, "0"), 4)
    state.apply(snapshot(engine(0), "a", 1, [running]), now=100.0)
    state.apply(snapshot(engine(0), "a", 2, []), now=103.0)

    assert value(scrape(state, now=105.0), "vllm:num_requests_running", **ENGINE0) == 4


def test_final_snapshot_retires_counters_and_drops_gauges() -> None:
    state = MergeState()
    reporter = Reporter(engine(0), Catalog())
    reporter.record(
        step=3,
        counters=[(reporter.series("vllm:prompt_tokens"), 30)],
        gauges=[(reporter.series("vllm:num_requests_running"), 2)],
    )
    state.apply(reporter.snapshot(full=True, final=True), now=0.0)
    samples = scrape(state, now=0.0)

    assert value(samples, "vllm:prompt_tokens_total", **ENGINE0) == 30
    assert value(samples, "vllm:num_requests_running", **ENGINE0) is None


def test_tp_skew_is_slowest_over_fastest_rank() -> None:
    state = MergeState()
    catalog = Catalog()
    for r, step_time in enumerate([0.010, 0.015, 0.012]):
        reporter = Reporter(rank(0, r), catalog)
        last = reporter.series("tpmetrics:rank_last_step_time_seconds")
        reporter.record(step=5, gauges=[(last, step_time)])
        state.apply(reporter.snapshot(), now=0.0)
    samples = scrape(state, now=0.0)

    assert value(samples, "tpmetrics:tp_step_time_skew_ratio", **ENGINE0) == pytest.approx(1.5)
    assert value(samples, "tpmetrics:rank_last_step_time_seconds", **ENGINE0, rank="1") == 0.015


def test_self_metrics_count_sources_and_snapshots() -> None:
    state = MergeState()
    for r in range(2):
        state.apply(snapshot(rank(0, r), f"r{r}", 1, []), now=10.0)
    state.apply(snapshot(engine(0), "e", 1, []), now=11.0)
    samples = scrape(state, now=12.0)

    assert value(samples, "tpmetrics_live_sources", model_name=MODEL, kind="rank") == 2
    assert value(samples, "tpmetrics_live_sources", model_name=MODEL, kind="engine") == 1
    assert value(samples, "tpmetrics_last_flush_age_seconds", model_name=MODEL, kind="rank") == 2
    assert value(samples, "tpmetrics_snapshots_accepted_total", model_name=MODEL, kind="rank") == 2


def test_exposition_escapes_model_name() -> None:
    model = 'm"od\\el\nnäme-模型'
    state = MergeState()
    source = SourceId(engine(0).kind, model, engine=0)
    state.apply(snapshot(source, "a", 1, [Sample("vllm:prompt_tokens", (model, "0"), 5)]), 0.0)
    samples = scrape(state, now=0.0)

    assert value(samples, "vllm:prompt_tokens_total", model_name=model, engine="0") == 5
    assert '\\"' in scrape_text(state, now=0.0)


def test_malformed_sample_rejected_alone() -> None:
    state = MergeState()
    bounds = (1.0, 2.0, 5.0, 10.0, 20.0)
    broken = HistogramValue(bounds, (None, 0, 0, 0, 0, 0), 1.0)  # type: ignore[arg-type]
    bad = Sample("vllm:request_params_n", (MODEL, "0"), broken)
    good = Sample("vllm:generation_tokens", (MODEL, "0"), 4)
    reply = state.apply(snapshot(engine(0), "a", 1, [bad, good]), now=0.0)
    samples = scrape(state, now=0.0)

    assert reply.accepted == 1
    assert (
        value(samples, "tpmetrics_samples_rejected_total", model_name=MODEL, reason="malformed")
        == 1
    )
    assert value(samples, "vllm:generation_tokens_total", **ENGINE0) == 4


def test_silent_source_returns_with_same_incarnation() -> None:
    state = MergeState(gauge_ttl_s=3.0)
    running = Sample("vllm:num_requests_running", (MODEL, "0"), 2)
    state.apply(snapshot(engine(0), "a", 1, [running, counter("vllm:prompt_tokens", 5)]), 0.0)
    silent = scrape(state, now=400.0)
    state.apply(snapshot(engine(0), "a", 2, [counter("vllm:prompt_tokens", 7)]), now=401.0)
    back = scrape(state, now=401.0)

    assert value(silent, "vllm:num_requests_running", **ENGINE0) is None
    assert value(back, "vllm:prompt_tokens_total", **ENGINE0) == 7
    assert value(back, "vllm:num_requests_running", **ENGINE0) == 2


def test_bucket_change_restarts_histogram() -> None:
    state = MergeState()
    name = "vllm:request_params_n"
    old = HistogramValue((1.0, 2.0, 5.0, 10.0, 20.0), (3, 0, 0, 0, 0, 0), 3.0)
    state.apply(snapshot(frontend(0), "a", 1, [Sample(name, (MODEL, "0"), old)]), now=0.0)
    state.configure_model(MODEL, CatalogConfig(custom_buckets={"request_params_n": (4.0,)}))
    before = scrape(state, now=0.0)
    new = HistogramValue((4.0,), (2, 0), 2.0)
    reply = state.apply(snapshot(frontend(1), "b", 1, [Sample(name, (MODEL, "0"), new)]), 0.0)
    after = scrape(state, now=0.0)

    assert value(before, f"{name}_count", **ENGINE0) == 3
    assert reply.accepted == 1
    assert value(after, f"{name}_bucket", **ENGINE0, le="4.0") == 2
    assert value(after, f"{name}_count", **ENGINE0) == 2


def test_engine_restart_with_era_ids_counts_each_life() -> None:
    state = MergeState()
    name = "vllm:generation_tokens"

    def report(r: int, incarnation: str, era: str, step: int, amount: float) -> None:
        sample = Sample(name, (MODEL, "0"), amount)
        snap = Snapshot(rank(0, r), incarnation, step, step, (sample,), era=era)
        state.apply(snap, now=0.0)

    def merged() -> float | None:
        return value(scrape(state, 0.0), "vllm:generation_tokens_total", **ENGINE0)

    report(1, "r1-a", "life-a", step=10, amount=10)
    assert merged() == 10
    report(0, "r0-b", "life-b", step=5, amount=5)
    assert merged() == 15
    report(1, "r1-b", "life-b", step=9, amount=9)
    report(0, "r0-b", "life-b", step=9, amount=9)
    assert merged() == 19
