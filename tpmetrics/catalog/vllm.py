"""The vLLM families: names, types, labels and buckets exactly as vLLM's v1 engine exports them.

Every family has the labels `model_name` and `engine` (the DP rank, as a
string), then its own. Every family has engine scope: one engine step or
finished request is counted once however many sources report it. vLLM's
scheduler gauges use prometheus_client's multiprocess mode `mostrecent`, so
their reducer here is LATEST.

NOTE: `vllm:lora_requests_info` is not exported. vLLM gives it neither
`model_name` nor `engine` and sets it to the wall-clock time of the last
update, so it cannot be merged across engines or sources.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from tpmetrics.catalog.types import Family, MetricType, Reducer, Scope

ENGINE_LABELS: tuple[str, ...] = ("model_name", "engine")

CACHE_CONFIG_LABELS: tuple[str, ...] = (
    "block_size",
    "cache_dtype",
    "enable_prefix_caching",
    "gpu_memory_utilization",
    "num_gpu_blocks",
    "num_cpu_blocks",
    "prefix_caching_hash_algo",
    "kv_cache_size_tokens",
)
"""Labels of `vllm:cache_config_info` after `model_name` and `engine`."""

_G = MetricType.GAUGE
_C = MetricType.COUNTER
_H = MetricType.HISTOGRAM

_Row = tuple[str, MetricType, tuple[str, ...], str | None, str]

# Columns: declared name (counters without `_total`), type, labels after
# model_name and engine, bucket family, HELP text.
# fmt: off
_ROWS: tuple[_Row, ...] = (
    ("vllm:num_requests_running", _G, (), None,
     "Number of requests in the engine's running batch."),
    ("vllm:num_requests_waiting", _G, (), None,
     "Number of requests waiting to be scheduled, for capacity or deferred."),
    ("vllm:num_requests_waiting_by_reason", _G, ("reason",), None,
     "Waiting requests by reason: capacity (no free KV cache or batch slot) "
     "or deferred (held back by a temporary constraint)."),
    ("vllm:num_requests_kv_fetch_by_stage", _G, ("stage",), None,
     "Requests loading their KV cache from another instance, by stage of the load."),
    ("vllm:engine_sleep_state", _G, ("sleep_state",), None,
     "Sleep state of the engine: 1 for the current state (awake, "
     "weights_offloaded or discard_all) and 0 for the others."),
    ("vllm:kv_cache_usage_perc", _G, (), None,
     "Fraction of KV cache blocks in use, from 0 to 1."),
    ("vllm:corrupted_requests", _C, (), None,
     "Finished requests whose logits contained NaN values."),
    ("vllm:prefix_cache_queries", _C, (), None,
     "Tokens looked up in the local prefix cache."),
    ("vllm:prefix_cache_hits", _C, (), None,
     "Tokens found in the local prefix cache."),
    ("vllm:external_prefix_cache_queries", _C, (), None,
     "Tokens looked up in the KV connector's cache on other instances."),
    ("vllm:external_prefix_cache_hits", _C, (), None,
     "Tokens found in the KV connector's cache on other instances."),
    ("vllm:mm_cache_queries", _C, (), None,
     "Multimodal items looked up in the multimodal cache."),
    ("vllm:mm_cache_hits", _C, (), None,
     "Multimodal items found in the multimodal cache."),
    ("vllm:num_preemptions", _C, (), None,
     "Times the scheduler preempted a running request."),
    ("vllm:prompt_tokens", _C, (), None,
     "Prompt tokens of all prefills, cached tokens included."),
    ("vllm:prompt_tokens_by_source", _C, ("source",), None,
     "Prompt tokens by source: local_compute, local_cache_hit or external_kv_transfer."),
    ("vllm:prompt_tokens_cached", _C, (), None,
     "Prompt tokens taken from the local prefix cache or an external KV "
     "transfer instead of computed."),
    ("vllm:generation_tokens", _C, (), None,
     "Output tokens generated."),
    ("vllm:request_success", _C, ("finished_reason",), None,
     "Finished requests by finish reason."),
    ("vllm:request_prompt_tokens", _H, (), "request_tokens",
     "Prompt length of each finished request, in tokens."),
    ("vllm:request_generation_tokens", _H, (), "request_tokens",
     "Output tokens generated for each finished request."),
    ("vllm:iteration_tokens_total", _H, (), "iteration_tokens",
     "Tokens per engine step: computed prompt tokens plus generated tokens."),
    ("vllm:request_max_num_generation_tokens", _H, (), "request_tokens",
     "Maximum number of output tokens each request asked for."),
    ("vllm:request_params_n", _H, (), "request_params_n",
     "The n sampling parameter of each request."),
    ("vllm:request_params_max_tokens", _H, (), "request_tokens",
     "The max_tokens sampling parameter of each request that set it."),
    ("vllm:time_to_first_token_seconds", _H, (), "time_to_first_token",
     "Time from the arrival of a request to its first output token, in seconds."),
    ("vllm:inter_token_latency_seconds", _H, (), "inter_token_latency",
     "Time between consecutive outputs of a request, in seconds."),
    ("vllm:request_time_per_output_token_seconds", _H, (), "inter_token_latency",
     "Mean time per output token of each finished request, in seconds: "
     "decode time over output tokens minus one."),
    ("vllm:e2e_request_latency_seconds", _H, (), "request_latency",
     "Time from the arrival of a request to its last output token, in seconds."),
    ("vllm:request_queue_time_seconds", _H, (), "request_latency",
     "Time a request waited in the queue before it was first scheduled, in seconds."),
    ("vllm:request_inference_time_seconds", _H, (), "request_latency",
     "Time from the first scheduling of a request to its last output token, in seconds."),
    ("vllm:request_prefill_time_seconds", _H, (), "request_latency",
     "Time from the first scheduling of a request to its first output token, in seconds."),
    ("vllm:request_decode_time_seconds", _H, (), "request_latency",
     "Time from the first output token of a request to its last, in seconds."),
    ("vllm:request_num_preemptions", _H, (), "request_num_preemptions",
     "Times each finished request was preempted."),
    ("vllm:request_prefill_kv_computed_tokens", _H, (), "request_tokens",
     "Prompt tokens of each finished request whose KV cache the prefill "
     "computed rather than found cached."),
    ("vllm:kv_block_lifetime_seconds", _H, (), "kv_cache_residency",
     "Time from the allocation of a sampled KV cache block to its eviction, in seconds."),
    ("vllm:kv_block_idle_before_evict_seconds", _H, (), "kv_cache_residency",
     "Time from the last access to a sampled KV cache block to its eviction, in seconds."),
    ("vllm:kv_block_reuse_gap_seconds", _H, (), "kv_cache_residency",
     "Time between consecutive accesses to a sampled KV cache block, in seconds."),
    ("vllm:cache_config_info", _G, CACHE_CONFIG_LABELS, None,
     "KV cache configuration of the engine, in the labels; the value is always 1."),
    ("vllm:spec_decode_num_drafts", _C, (), None,
     "Speculative decoding drafts verified."),
    ("vllm:spec_decode_num_draft_tokens", _C, (), None,
     "Draft tokens proposed by speculative decoding."),
    ("vllm:spec_decode_num_accepted_tokens", _C, (), None,
     "Draft tokens accepted by speculative decoding."),
    ("vllm:spec_decode_num_accepted_tokens_per_pos", _C, ("position",), None,
     "Accepted draft tokens by position in the draft, from 0."),
    ("vllm:estimated_flops_per_gpu", _C, (), None,
     "Estimated floating-point operations per GPU."),
    ("vllm:estimated_read_bytes_per_gpu", _C, (), None,
     "Estimated bytes read from GPU memory per GPU."),
    ("vllm:estimated_write_bytes_per_gpu", _C, (), None,
     "Estimated bytes written to GPU memory per GPU."),
    ("vllm:nixl_xfer_time_seconds", _H, (), "nixl_xfer_time",
     "Duration of each NIXL KV cache transfer, in seconds."),
    ("vllm:nixl_post_time_seconds", _H, (), "nixl_post_time",
     "Time to post each NIXL KV cache transfer, in seconds."),
    ("vllm:nixl_bytes_transferred", _H, (), "nixl_bytes_transferred",
     "Bytes moved by each NIXL KV cache transfer."),
    ("vllm:nixl_num_descriptors", _H, (), "nixl_num_descriptors",
     "Descriptors in each NIXL KV cache transfer."),
    ("vllm:nixl_num_failed_transfers", _C, (), None,
     "NIXL KV cache transfers that failed."),
    ("vllm:nixl_num_failed_notifications", _C, (), None,
     "NIXL notifications that failed."),
    ("vllm:nixl_num_kv_expired_reqs", _C, (), None,
     "Requests whose KV cache lease expired before the transfer, counted on "
     "the prefill instance."),
)

# Columns: deprecated name, the family that replaces it, version that
# deprecated it. The deprecated family keeps the type, labels and buckets of
# its replacement.
_DEPRECATED_ROWS: tuple[tuple[str, str, str], ...] = (
    ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc", "0.9"),
    ("vllm:gpu_prefix_cache_queries", "vllm:prefix_cache_queries", "0.9"),
    ("vllm:gpu_prefix_cache_hits", "vllm:prefix_cache_hits", "0.9"),
    ("vllm:time_per_output_token_seconds", "vllm:inter_token_latency_seconds", "0.11"),
)
# fmt: on


def _build_family(row: _Row) -> Family:
    name, metric_type, extra_labels, bucket_family, documentation = row
    return Family(
        name=name,
        type=metric_type,
        documentation=documentation,
        labelnames=ENGINE_LABELS + extra_labels,
        scope=Scope.ENGINE,
        reducer=Reducer.LATEST if metric_type is MetricType.GAUGE else None,
        bucket_family=bucket_family,
    )


def _build_deprecated(current: dict[str, Family]) -> tuple[Family, ...]:
    return tuple(
        dataclasses.replace(
            current[replacement],
            name=name,
            documentation=f"DEPRECATED: Use {replacement} instead. "
            f"{current[replacement].documentation}",
            deprecated_in=deprecated_in,
        )
        for name, replacement, deprecated_in in _DEPRECATED_ROWS
    )


_CURRENT = {row[0]: _build_family(row) for row in _ROWS}

REPLACED_BY: Mapping[str, str] = MappingProxyType(
    {name: replacement for name, replacement, _ in _DEPRECATED_ROWS}
)
"""The family that replaces each deprecated vLLM family."""

VLLM_FAMILIES: tuple[Family, ...] = tuple(_CURRENT.values()) + _build_deprecated(_CURRENT)
"""Every vLLM family in the catalog, deprecated ones last."""
