"""The catalog: vLLM's families exactly, tpmetrics' own, the policy and the reference page."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tpmetrics.catalog import (
    ENGINE_DATA_FAMILIES,
    SELF_FAMILIES,
    TPMETRICS_FAMILIES,
    VLLM_FAMILIES,
    Catalog,
    CatalogConfig,
    Family,
    MetricType,
    Reducer,
    Scope,
    UnknownFamilyError,
    check_families,
    is_shown,
)
from tpmetrics.catalog.buckets import BUCKET_FAMILY_KEYS
from tpmetrics.catalog.reference import render_reference, scraped_name

G, C, H = MetricType.GAUGE, MetricType.COUNTER, MetricType.HISTOGRAM
BASE = ("model_name", "engine")
CACHE_CONFIG = (
    "block_size",
    "cache_dtype",
    "enable_prefix_caching",
    "gpu_memory_utilization",
    "num_gpu_blocks",
    "num_cpu_blocks",
    "prefix_caching_hash_algo",
    "kv_cache_size_tokens",
)

# vLLM's families as a scrape shows them: type, labels after model_name and
# engine, bucket family.
VLLM_EXPECTED: dict[str, tuple[MetricType, tuple[str, ...], str | None]] = {
    "vllm:num_requests_running": (G, (), None),
    "vllm:num_requests_waiting": (G, (), None),
    "vllm:num_requests_waiting_by_reason": (G, ("reason",), None),
    "vllm:num_requests_kv_fetch_by_stage": (G, ("stage",), None),
    "vllm:engine_sleep_state": (G, ("sleep_state",), None),
    "vllm:kv_cache_usage_perc": (G, (), None),
    "vllm:corrupted_requests_total": (C, (), None),
    "vllm:prefix_cache_queries_total": (C, (), None),
    "vllm:prefix_cache_hits_total": (C, (), None),
    "vllm:external_prefix_cache_queries_total": (C, (), None),
    "vllm:external_prefix_cache_hits_total": (C, (), None),
    "vllm:mm_cache_queries_total": (C, (), None),
    "vllm:mm_cache_hits_total": (C, (), None),
    "vllm:num_preemptions_total": (C, (), None),
    "vllm:prompt_tokens_total": (C, (), None),
    "vllm:prompt_tokens_by_source_total": (C, ("source",), None),
    "vllm:prompt_tokens_cached_total": (C, (), None),
    "vllm:generation_tokens_total": (C, (), None),
    "vllm:request_success_total": (C, ("finished_reason",), None),
    "vllm:request_prompt_tokens": (H, (), "request_tokens"),
    "vllm:request_generation_tokens": (H, (), "request_tokens"),
    "vllm:iteration_tokens_total": (H, (), "iteration_tokens"),
    "vllm:request_max_num_generation_tokens": (H, (), "request_tokens"),
    "vllm:request_params_n": (H, (), "request_params_n"),
    "vllm:request_params_max_tokens": (H, (), "request_tokens"),
    "vllm:time_to_first_token_seconds": (H, (), "time_to_first_token"),
    "vllm:inter_token_latency_seconds": (H, (), "inter_token_latency"),
    "vllm:request_time_per_output_token_seconds": (H, (), "inter_token_latency"),
    "vllm:e2e_request_latency_seconds": (H, (), "request_latency"),
    "vllm:request_queue_time_seconds": (H, (), "request_latency"),
    "vllm:request_inference_time_seconds": (H, (), "request_latency"),
    "vllm:request_prefill_time_seconds": (H, (), "request_latency"),
    "vllm:request_decode_time_seconds": (H, (), "request_latency"),
    "vllm:request_num_preemptions": (H, (), "request_num_preemptions"),
    "vllm:request_prefill_kv_computed_tokens": (H, (), "request_tokens"),
    "vllm:kv_block_lifetime_seconds": (H, (), "kv_cache_residency"),
    "vllm:kv_block_idle_before_evict_seconds": (H, (), "kv_cache_residency"),
    "vllm:kv_block_reuse_gap_seconds": (H, (), "kv_cache_residency"),
    "vllm:cache_config_info": (G, CACHE_CONFIG, None),
    "vllm:spec_decode_num_drafts_total": (C, (), None),
    "vllm:spec_decode_num_draft_tokens_total": (C, (), None),
    "vllm:spec_decode_num_accepted_tokens_total": (C, (), None),
    "vllm:spec_decode_num_accepted_tokens_per_pos_total": (C, ("position",), None),
    "vllm:estimated_flops_per_gpu_total": (C, (), None),
    "vllm:estimated_read_bytes_per_gpu_total": (C, (), None),
    "vllm:estimated_write_bytes_per_gpu_total": (C, (), None),
    "vllm:nixl_xfer_time_seconds": (H, (), "nixl_xfer_time"),
    "vllm:nixl_post_time_seconds": (H, (), "nixl_post_time"),
    "vllm:nixl_bytes_transferred": (H, (), "nixl_bytes_transferred"),
    "vllm:nixl_num_descriptors": (H, (), "nixl_num_descriptors"),
    "vllm:nixl_num_failed_transfers_total": (C, (), None),
    "vllm:nixl_num_failed_notifications_total": (C, (), None),
    "vllm:nixl_num_kv_expired_reqs_total": (C, (), None),
}

DEPRECATED_EXPECTED = {
    "vllm:gpu_cache_usage_perc": ("0.9", "vllm:kv_cache_usage_perc"),
    "vllm:gpu_prefix_cache_queries": ("0.9", "vllm:prefix_cache_queries"),
    "vllm:gpu_prefix_cache_hits": ("0.9", "vllm:prefix_cache_hits"),
    "vllm:time_per_output_token_seconds": ("0.11", "vllm:inter_token_latency_seconds"),
}

RANK = ("model_name", "engine", "rank")

# name: type, labels, scope, reducer, bucket family, derived
TPMETRICS_EXPECTED = {
    "tpmetrics:rank_step_time_seconds": (H, RANK, Scope.RANK, None, "step_time", False),
    "tpmetrics:rank_collective_time_seconds": (H, RANK, Scope.RANK, None, "step_time", False),
    "tpmetrics:rank_forward_time_seconds": (H, RANK, Scope.RANK, None, "step_time", False),
    "tpmetrics:rank_steps": (C, RANK, Scope.RANK, None, None, False),
    "tpmetrics:rank_tokens": (C, RANK, Scope.RANK, None, None, False),
    "tpmetrics:rank_last_step_time_seconds": (G, RANK, Scope.RANK, Reducer.LATEST, None, False),
    "tpmetrics:tp_step_time_skew_ratio": (G, BASE, Scope.ENGINE, Reducer.MAX, None, True),
}

SELF_EXPECTED = {
    "tpmetrics_snapshots_accepted": (C, ("model_name", "kind"), None),
    "tpmetrics_snapshots_rejected": (C, ("model_name", "reason"), None),
    "tpmetrics_samples_rejected": (C, ("model_name", "reason"), None),
    "tpmetrics_live_sources": (G, ("model_name", "kind"), Reducer.SUM),
    "tpmetrics_last_flush_age_seconds": (G, ("model_name", "kind"), Reducer.MAX),
    "tpmetrics_reporter_dropped_snapshots": (C, ("model_name", "kind"), None),
    "tpmetrics_reporter_dropped_observations": (C, ("model_name", "kind"), None),
}

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def family_by_scraped_name(catalog: Catalog, name: str) -> Family:
    matches = [family for family in catalog if scraped_name(family) == name]
    assert len(matches) == 1, f"{name}: {len(matches)} families"
    return matches[0]


def make_family(name: str, **changes: object) -> Family:
    fields: dict[str, object] = {
        "name": name,
        "type": C,
        "documentation": "Test family.",
        "labelnames": BASE,
    }
    fields.update(changes)
    return Family(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog()


@pytest.mark.parametrize("name", sorted(VLLM_EXPECTED))
def test_vllm_family_type(catalog: Catalog, name: str) -> None:
    assert family_by_scraped_name(catalog, name).type is VLLM_EXPECTED[name][0]


@pytest.mark.parametrize("name", sorted(VLLM_EXPECTED))
def test_vllm_family_labels(catalog: Catalog, name: str) -> None:
    expected = BASE + VLLM_EXPECTED[name][1]
    assert family_by_scraped_name(catalog, name).labelnames == expected


@pytest.mark.parametrize("name", sorted(VLLM_EXPECTED))
def test_vllm_family_buckets(catalog: Catalog, name: str) -> None:
    assert family_by_scraped_name(catalog, name).bucket_family == VLLM_EXPECTED[name][2]


def test_vllm_table_has_no_extra_families() -> None:
    current = {scraped_name(f) for f in VLLM_FAMILIES if f.deprecated_in is None}
    assert current == set(VLLM_EXPECTED)


def test_vllm_families_have_engine_scope() -> None:
    assert {family.scope for family in VLLM_FAMILIES} == {Scope.ENGINE}


def test_vllm_gauges_reduce_to_latest() -> None:
    gauges = [family for family in VLLM_FAMILIES if family.type is G]
    assert {family.reducer for family in gauges} == {Reducer.LATEST}


def test_vllm_families_are_not_derived() -> None:
    assert not any(family.derived for family in VLLM_FAMILIES)


def test_lora_requests_info_not_exported() -> None:
    names = {family.name for family in ENGINE_DATA_FAMILIES + SELF_FAMILIES}
    assert "vllm:lora_requests_info" not in names


@pytest.mark.parametrize("name", sorted(DEPRECATED_EXPECTED))
def test_deprecated_family_version(name: str) -> None:
    family = next(family for family in VLLM_FAMILIES if family.name == name)
    assert family.deprecated_in == DEPRECATED_EXPECTED[name][0]


@pytest.mark.parametrize("name", sorted(DEPRECATED_EXPECTED))
def test_deprecated_family_help_names_replacement(name: str) -> None:
    family = next(family for family in VLLM_FAMILIES if family.name == name)
    replacement = DEPRECATED_EXPECTED[name][1]
    assert family.documentation.startswith(f"DEPRECATED: Use {replacement} instead. ")


def test_only_listed_families_are_deprecated() -> None:
    deprecated = {family.name for family in VLLM_FAMILIES if family.deprecated_in is not None}
    assert deprecated == set(DEPRECATED_EXPECTED)


def test_time_per_output_token_uses_itl_buckets() -> None:
    catalog = Catalog(CatalogConfig(show_hidden_metrics_for_version="0.11"))
    assert (
        catalog.bounds("vllm:time_per_output_token_seconds")
        == catalog.buckets["inter_token_latency"]
    )


def test_default_catalog_hides_time_per_output_token(catalog: Catalog) -> None:
    assert "vllm:time_per_output_token_seconds" not in catalog


def test_flag_shows_time_per_output_token() -> None:
    catalog = Catalog(CatalogConfig(show_hidden_metrics_for_version="0.11"))
    assert "vllm:time_per_output_token_seconds" in catalog


@pytest.mark.parametrize("flag", [None, "0.9", "0.10", "0.11"])
def test_removed_families_stay_removed(flag: str | None) -> None:
    catalog = Catalog(CatalogConfig(show_hidden_metrics_for_version=flag))
    assert "vllm:gpu_cache_usage_perc" not in catalog


@pytest.mark.parametrize("name", sorted(TPMETRICS_EXPECTED))
def test_tpmetrics_family(catalog: Catalog, name: str) -> None:
    family = catalog.family(name)
    got = (
        family.type,
        family.labelnames,
        family.scope,
        family.reducer,
        family.bucket_family,
        family.derived,
    )
    assert got == TPMETRICS_EXPECTED[name]


def test_tpmetrics_table_has_no_extra_families() -> None:
    assert {family.name for family in TPMETRICS_FAMILIES} == set(TPMETRICS_EXPECTED)


@pytest.mark.parametrize("name", sorted(SELF_EXPECTED))
def test_self_family(name: str) -> None:
    family = next(family for family in SELF_FAMILIES if family.name == name)
    assert (family.type, family.labelnames, family.reducer) == SELF_EXPECTED[name]


def test_self_table_has_no_extra_families() -> None:
    assert {family.name for family in SELF_FAMILIES} == set(SELF_EXPECTED)


def test_self_families_kept_apart(catalog: Catalog) -> None:
    assert not any(family.name in catalog for family in SELF_FAMILIES)


def test_catalog_exposes_self_families(catalog: Catalog) -> None:
    assert catalog.self_families == SELF_FAMILIES


def test_every_family_starts_with_model_name() -> None:
    for family in ENGINE_DATA_FAMILIES + SELF_FAMILIES:
        assert family.labelnames[0] == "model_name", family.name


def test_engine_data_families_carry_engine() -> None:
    for family in ENGINE_DATA_FAMILIES:
        assert family.labelnames[1] == "engine", family.name


def test_every_histogram_bucket_family_resolves(catalog: Catalog) -> None:
    histograms = [family for family in catalog if family.type is H]
    for family in histograms:
        assert catalog.bounds(family.name) == catalog.buckets[str(family.bucket_family)]


def test_every_bucket_family_is_used() -> None:
    used = {family.bucket_family for family in ENGINE_DATA_FAMILIES if family.type is H}
    assert used == set(BUCKET_FAMILY_KEYS)


def test_catalog_iterates_in_table_order(catalog: Catalog) -> None:
    expected = [family.name for family in ENGINE_DATA_FAMILIES if is_shown(family.deprecated_in)]
    assert [family.name for family in catalog] == expected


def test_catalog_length(catalog: Catalog) -> None:
    assert len(catalog) == len(VLLM_EXPECTED) + len(TPMETRICS_EXPECTED)


def test_family_returns_declared_family(catalog: Catalog) -> None:
    assert catalog.family("vllm:prompt_tokens").type is C


def test_unknown_family_is_key_error(catalog: Catalog) -> None:
    with pytest.raises(KeyError):
        catalog.family("vllm:no_such_family")


def test_unknown_family_message(catalog: Catalog) -> None:
    with pytest.raises(UnknownFamilyError, match=r"unknown family 'vllm:no_such_family'"):
        catalog.family("vllm:no_such_family")


def test_hidden_family_message_names_flag(catalog: Catalog) -> None:
    with pytest.raises(
        UnknownFamilyError,
        match=r"'vllm:time_per_output_token_seconds' is hidden: .*"
        r"set --show-hidden-metrics-for-version=0\.11 to show it; "
        r"use vllm:inter_token_latency_seconds instead",
    ):
        catalog.family("vllm:time_per_output_token_seconds")


def test_removed_family_message(catalog: Catalog) -> None:
    with pytest.raises(
        UnknownFamilyError,
        match=r"'vllm:gpu_prefix_cache_hits' was removed in vLLM 0\.11 \(deprecated in 0\.9\); "
        r"use vllm:prefix_cache_hits instead",
    ):
        catalog.family("vllm:gpu_prefix_cache_hits")


def test_total_suffix_message(catalog: Catalog) -> None:
    with pytest.raises(
        UnknownFamilyError, match=r"without the _total suffix .*; use 'vllm:prompt_tokens'"
    ):
        catalog.family("vllm:prompt_tokens_total")


def test_self_family_message(catalog: Catalog) -> None:
    with pytest.raises(UnknownFamilyError, match=r"is an aggregator self-metric"):
        catalog.family("tpmetrics_live_sources")


def test_unknown_family_error_keeps_name(catalog: Catalog) -> None:
    with pytest.raises(UnknownFamilyError) as caught:
        catalog.family("vllm:no_such_family")
    assert caught.value.name == "vllm:no_such_family"


def test_unknown_family_error_args_hold_message(catalog: Catalog) -> None:
    with pytest.raises(UnknownFamilyError) as caught:
        catalog.family("vllm:no_such_family")
    assert caught.value.args[0] == str(caught.value)


def test_bounds_of_counter_rejected(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match=r"'vllm:prompt_tokens' is a counter and has no bucket"):
        catalog.bounds("vllm:prompt_tokens")


def test_request_tokens_follow_max_model_len() -> None:
    catalog = Catalog(CatalogConfig(max_model_len=1024))
    assert catalog.bounds("vllm:request_prompt_tokens") == (
        1, 2, 5, 10, 20, 50, 100, 200, 500, 1000,
    )  # fmt: skip


def test_default_max_model_len_is_16384() -> None:
    assert CatalogConfig().max_model_len == 16384


def test_custom_buckets_apply() -> None:
    config = CatalogConfig(custom_buckets={"time_to_first_token": (0.1, 0.5, 1)})
    catalog = Catalog(config)
    assert catalog.bounds("vllm:time_to_first_token_seconds") == (0.1, 0.5, 1.0)


def test_custom_buckets_stored_as_float_tuples() -> None:
    config = CatalogConfig(custom_buckets={"step_time": [1, 2]})  # type: ignore[dict-item]
    assert config.custom_buckets["step_time"] == (1.0, 2.0)


def test_config_custom_buckets_read_only() -> None:
    config = CatalogConfig(custom_buckets={"step_time": (1.0,)})
    with pytest.raises(TypeError):
        config.custom_buckets["step_time"] = (2.0,)  # type: ignore[index]


def test_config_frozen() -> None:
    config = CatalogConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_model_len = 10  # type: ignore[misc]


def test_config_rejects_unknown_bucket_key() -> None:
    with pytest.raises(ValueError, match=r"unknown bucket family 'ttft'"):
        CatalogConfig(custom_buckets={"ttft": (1.0,)})


def test_config_rejects_invalid_bounds() -> None:
    with pytest.raises(ValueError, match=r"step_time: 1.0 follows 2.0"):
        CatalogConfig(custom_buckets={"step_time": (2.0, 1.0)})


def test_config_rejects_zero_max_model_len() -> None:
    with pytest.raises(ValueError, match=r"max_model_len must be at least 1 token, got 0"):
        CatalogConfig(max_model_len=0)


def test_config_rejects_float_max_model_len() -> None:
    with pytest.raises(TypeError, match=r"max_model_len must be an int, got float 1024.0"):
        CatalogConfig(max_model_len=1024.0)  # type: ignore[arg-type]


def test_config_rejects_flag_with_patch() -> None:
    with pytest.raises(ValueError, match=r"invalid --show-hidden-metrics-for-version '0.11.0'"):
        CatalogConfig(show_hidden_metrics_for_version="0.11.0")


def test_config_rejects_custom_buckets_list() -> None:
    with pytest.raises(TypeError, match=r"custom_buckets must be a mapping .*, got list"):
        CatalogConfig(custom_buckets=[("step_time", (1.0,))])  # type: ignore[arg-type]


def test_unused_flag_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tpmetrics.catalog.catalog"):
        Catalog(CatalogConfig(show_hidden_metrics_for_version="0.10"))
    assert "--show-hidden-metrics-for-version=0.10 shows no family" in caplog.text


def test_matching_flag_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tpmetrics.catalog.catalog"):
        Catalog(CatalogConfig(show_hidden_metrics_for_version="0.11"))
    assert caplog.text == ""


def test_check_rejects_duplicate_name() -> None:
    family = make_family("vllm:x")
    with pytest.raises(ValueError, match=r"family vllm:x is declared twice"):
        check_families([family, family], BUCKET_FAMILY_KEYS)


def test_check_rejects_unknown_bucket_family() -> None:
    family = make_family("vllm:x_seconds", type=H, bucket_family="nope")
    with pytest.raises(ValueError, match=r"vllm:x_seconds names unknown bucket family 'nope'"):
        check_families([family], BUCKET_FAMILY_KEYS)


def test_check_rejects_counter_with_total() -> None:
    family = make_family("vllm:x_total")
    with pytest.raises(ValueError, match=r"declare it as vllm:x because the exposition adds"):
        check_families([family], BUCKET_FAMILY_KEYS)


def test_check_rejects_labels_without_model_name() -> None:
    family = make_family("vllm:x", labelnames=("engine", "model_name"))
    with pytest.raises(ValueError, match=r"labels must start with \['model_name', 'engine'\]"):
        check_families([family], BUCKET_FAMILY_KEYS)


def test_check_accepts_self_family_without_engine() -> None:
    check_families([make_family("tpmetrics_x", labelnames=("model_name",))], BUCKET_FAMILY_KEYS)


def register(family: Family, registry: CollectorRegistry, catalog: Catalog) -> None:
    labels = [f"{label}_value" for label in family.labelnames]
    if family.type is C:
        Counter(family.name, family.documentation, family.labelnames, registry=registry).labels(
            *labels
        ).inc()
    elif family.type is G:
        Gauge(family.name, family.documentation, family.labelnames, registry=registry).labels(
            *labels
        ).set(1)
    else:
        buckets = catalog.buckets[str(family.bucket_family)]
        Histogram(
            family.name, family.documentation, family.labelnames, registry=registry, buckets=buckets
        ).labels(*labels).observe(1)


def test_prometheus_client_exposes_scraped_names(catalog: Catalog) -> None:
    registry = CollectorRegistry()
    families = [*ENGINE_DATA_FAMILIES, *SELF_FAMILIES]
    for family in families:
        register(family, registry, catalog)
    text = generate_latest(registry).decode()
    sample_names = {
        sample.name for parsed in text_string_to_metric_families(text) for sample in parsed.samples
    }
    for family in families:
        expected = scraped_name(family)
        if family.type is H:
            expected += "_count"
        assert expected in sample_names, family.name


def test_doc_contains_reference_verbatim() -> None:
    assert render_reference() in DOC_PATH.read_text(encoding="utf-8")


def test_reference_module_prints_reference() -> None:
    completed = subprocess.run(
        [sys.executable, "-W", "error", "-m", "tpmetrics.catalog.reference"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert completed.stdout == render_reference()


def test_reference_lists_every_family() -> None:
    page = render_reference()
    for family in ENGINE_DATA_FAMILIES + SELF_FAMILIES:
        assert f"| `{scraped_name(family)}` |" in page, family.name


def test_reference_states_hidden_family() -> None:
    assert "`--show-hidden-metrics-for-version=0.11`" in render_reference()
