"""Bucket families: defaults, the 1-2-5 series, overrides and their validation."""

from __future__ import annotations

import pytest

from tpmetrics.catalog.buckets import (
    BUCKET_FAMILY_KEYS,
    build_1_2_5_buckets,
    default_buckets,
    parse_custom_buckets,
    resolve_buckets,
)

VLLM_DEFAULTS: dict[str, list[float]] = {
    "request_latency": [
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
        50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
    ],
    "time_to_first_token": [
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
        2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
    ],
    "inter_token_latency": [
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
        2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    ],
    "iteration_tokens": [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
    "request_params_n": [1, 2, 5, 10, 20],
    "request_num_preemptions": [1, 2, 3, 4, 5, 10, 20],
    "kv_cache_residency": [
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20,
        30, 60, 120, 300, 600, 1200, 1800,
    ],
    "nixl_xfer_time": [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0],
    "nixl_post_time": [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0,
    ],
    "nixl_bytes_transferred": [
        2048, 8192, 32768, 131072, 524288, 2097152, 8388608, 33554432,
        134217728, 536870912, 2147483648, 8589934592,
    ],
    "nixl_num_descriptors": [
        10, 20, 30, 50, 75, 100, 200, 400, 1000, 2000, 4000, 10000, 20000, 50000,
    ],
}  # fmt: skip


@pytest.mark.parametrize(
    ("max_value", "expected"),
    [
        (100, [1, 2, 5, 10, 20, 50, 100]),
        (1024, [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]),
        (32768, [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000]),
        (1, [1]),
        (4, [1, 2]),
        (199, [1, 2, 5, 10, 20, 50, 100]),
    ],
)
def test_series_1_2_5_stops_at_cap(max_value: int, expected: list[float]) -> None:
    assert build_1_2_5_buckets(max_value) == tuple(expected)


def test_series_1_2_5_returns_floats() -> None:
    assert all(type(bound) is float for bound in build_1_2_5_buckets(1000))


def test_series_rejects_zero_max_model_len() -> None:
    with pytest.raises(ValueError, match=r"max_model_len must be at least 1 token, got 0"):
        build_1_2_5_buckets(0)


def test_series_rejects_bool_max_model_len() -> None:
    with pytest.raises(TypeError, match=r"max_model_len must be an int, got bool True"):
        build_1_2_5_buckets(True)


@pytest.mark.parametrize("key", sorted(VLLM_DEFAULTS))
def test_defaults_match_vllm(key: str) -> None:
    assert default_buckets(16384)[key] == tuple(VLLM_DEFAULTS[key])


def test_defaults_request_tokens_follow_max_model_len() -> None:
    assert default_buckets(1024)["request_tokens"] == (
        1, 2, 5, 10, 20, 50, 100, 200, 500, 1000,
    )  # fmt: skip


def test_step_time_spans_half_ms_to_ten_s() -> None:
    step_time = default_buckets(16384)["step_time"]
    assert step_time[0] == 0.0005
    assert step_time[-1] == 10.0


def test_defaults_cover_every_key_in_order() -> None:
    assert tuple(default_buckets(16384)) == BUCKET_FAMILY_KEYS


def test_defaults_are_strictly_increasing() -> None:
    for key, bounds in default_buckets(16384).items():
        assert list(bounds) == sorted(set(bounds)), key


def test_resolve_replaces_only_named_family() -> None:
    resolved = resolve_buckets(16384, {"time_to_first_token": [0.1, 0.5, 1]})
    assert resolved["time_to_first_token"] == (0.1, 0.5, 1.0)
    assert resolved["request_latency"] == tuple(VLLM_DEFAULTS["request_latency"])


def test_resolve_replaces_request_tokens() -> None:
    resolved = resolve_buckets(16384, {"request_tokens": [10, 100]})
    assert resolved["request_tokens"] == (10.0, 100.0)


def test_resolve_without_custom_is_defaults() -> None:
    assert resolve_buckets(2048) == default_buckets(2048)


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        ({"ttft": [1.0]}, r"unknown bucket family 'ttft' in custom buckets; use one of: "),
        ({"step_time": []}, r"invalid custom buckets for step_time: the list is empty"),
        ({"step_time": [0, 1]}, r"step_time: bound 0 is not positive; give bounds greater than 0"),
        ({"step_time": [-1.0]}, r"step_time: bound -1.0 is not positive"),
        ({"step_time": [1, float("inf")]}, r"step_time: bound inf is not finite"),
        ({"step_time": [float("nan")]}, r"step_time: bound nan is not finite"),
        ({"step_time": [1, 0.5]}, r"step_time: 0.5 follows 1.0; list each bound once"),
        ({"step_time": [1, 1]}, r"step_time: 1.0 follows 1.0; list each bound once"),
    ],
)
def test_resolve_rejects_invalid(custom: dict[str, list[float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_buckets(16384, custom)


def test_resolve_rejects_string_bound() -> None:
    custom = {"step_time": [1, "2"]}
    with pytest.raises(TypeError, match=r"step_time: bound '2' is a str; give numbers"):
        resolve_buckets(16384, custom)  # type: ignore[arg-type]


def test_resolve_rejects_string_list() -> None:
    custom = {"step_time": "1,2"}
    with pytest.raises(TypeError, match=r"step_time: expected a list of numbers, got str"):
        resolve_buckets(16384, custom)  # type: ignore[arg-type]


def test_parse_accepts_vllm_example() -> None:
    parsed = parse_custom_buckets('{"time_to_first_token": [0.1, 0.5, 1]}')
    assert parsed == {"time_to_first_token": (0.1, 0.5, 1.0)}


def test_parse_accepts_empty_object() -> None:
    assert parse_custom_buckets("{}") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"step_time": [1, 2]', r"invalid --custom-histogram-buckets .*: not valid JSON"),
        ("[1, 2]", r"expected a JSON object .*, got list"),
        ('{"step_time": 1}', r"entry 'step_time': expected a list of numbers, got 1"),
        ('{"step_time": [1, "2"]}', r"entry 'step_time': bound \"2\" is not a number"),
        ('{"step_time": [true]}', r"entry 'step_time': bound true is not a number"),
        ('{"step_time": [1], "step_time": [2]}', r"key 'step_time' appears twice"),
        ('{"ttft": [1]}', r"unknown bucket family 'ttft'"),
        ('{"step_time": [NaN]}', r"step_time: bound nan is not finite"),
        ('{"step_time": [2, 1]}', r"step_time: 1.0 follows 2.0"),
    ],
)
def test_parse_rejects_invalid(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_custom_buckets(text)
