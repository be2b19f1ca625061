"""The benchmark scripts run end to end on a tiny size. Their timings are not checked."""

from __future__ import annotations

import pytest

from benchmarks import bench_record, bench_render
from tpmetrics.aggregator.state import MergeState
from tpmetrics.catalog import Catalog


def test_bench_record_quick_runs(capsys: pytest.CaptureFixture[str]) -> None:
    status = bench_record.main(["--quick", "--steps", "20", "--repeat", "2"])
    output = capsys.readouterr().out

    assert status == 0
    assert "ratio tpmetrics / prometheus_client" in output
    assert "snapshot() every 1 ms" in output


def test_bench_render_quick_runs(capsys: pytest.CaptureFixture[str]) -> None:
    status = bench_render.main(["--quick", "--engines", "2", "--tp", "2", "--repeat", "1"])
    output = capsys.readouterr().out

    assert status == 0
    assert "2 engines x TP 2: 6 sources" in output
    assert "ratio tpmetrics / prometheus_client" in output


def test_render_workload_matches_prometheus() -> None:
    workload = bench_render.Workload(engines=2, tp=2)
    state = MergeState()
    bench_render.time_apply(workload, state, rounds=1)
    result = bench_render.time_render(workload, state, repeat=1)

    assert result.sizes["tpmetrics"] == result.sizes["prometheus"]
    assert result.sizes["prometheus created"].series > result.sizes["prometheus"].series


def test_step_recorders_record_same_totals() -> None:
    catalog = Catalog()

    bench_record.check_same_totals(catalog, bench_record.StepValues(), steps=5)


def test_extra_label_sets_cover_catalog() -> None:
    catalog = Catalog()
    counts = {family.name: len(bench_render.extra_label_sets(family)) for family in catalog}

    assert counts["vllm:request_success"] == 4
    assert counts["vllm:prompt_tokens_by_source"] == 3
    assert counts["vllm:cache_config_info"] == 1
    assert counts["vllm:num_requests_running"] == 1
