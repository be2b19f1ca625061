"""Bucket families: the named sets of histogram bounds, and their overrides.

Every histogram in the catalog takes its bounds from one bucket family. The
default bounds of the vLLM families are those of vLLM's
`vllm/v1/metrics/buckets.py` and, for NIXL, of its NIXL KV connector. The
`request_tokens` family depends on the served model's `max_model_len`.
Overrides use the same JSON map as vLLM's `--custom-histogram-buckets`
option: a family key mapped to a list of bounds that replaces the whole
family.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

BucketBounds = tuple[float, ...]

REQUEST_TOKENS = "request_tokens"

# Bounds of every family except `request_tokens`, which is built per model.
# fmt: off
_FIXED_BUCKETS: dict[str, BucketBounds] = {
    "request_latency": (
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
        50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
    ),
    "time_to_first_token": (
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
        2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
    ),
    "inter_token_latency": (
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
        2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    ),
    "iteration_tokens": (
        1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
        4096.0, 8192.0, 16384.0,
    ),
    "request_params_n": (1.0, 2.0, 5.0, 10.0, 20.0),
    "request_num_preemptions": (1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0),
    "kv_cache_residency": (
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
        10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
    ),
    # vLLM's NIXL KV connector declares these bounds with its histograms and
    # its --custom-histogram-buckets option does not cover them. The keys are
    # tpmetrics' names.
    "nixl_xfer_time": (
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0,
    ),
    "nixl_post_time": (
        0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0,
    ),
    "nixl_bytes_transferred": tuple(float(2 ** (10 + i)) for i in range(1, 25, 2)),
    "nixl_num_descriptors": (
        10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0, 400.0, 1000.0, 2000.0,
        4000.0, 10000.0, 20000.0, 50000.0,
    ),
    # tpmetrics' per-rank step timings: 0.5 ms covers a small GPU decode
    # step and 10 s a large CPU prefill.
    "step_time": (
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        2.5, 5.0, 10.0,
    ),
}
# fmt: on

BUCKET_FAMILY_KEYS: tuple[str, ...] = (
    "request_latency",
    "time_to_first_token",
    "inter_token_latency",
    "iteration_tokens",
    "request_params_n",
    "request_num_preemptions",
    REQUEST_TOKENS,
    "kv_cache_residency",
    "nixl_xfer_time",
    "nixl_post_time",
    "nixl_bytes_transferred",
    "nixl_num_descriptors",
    "step_time",
)
"""Every bucket family key, in table order."""


def build_1_2_5_buckets(max_value: int) -> BucketBounds:
    """Build the series 1, 2, 5, 10, 20, 50, ... of every value up to `max_value`.

    The series stops before the first value above `max_value`, so
    `build_1_2_5_buckets(100)` is `(1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)`.
    """
    _check_max_model_len(max_value)
    bounds: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * scale
            if value > max_value:
                return tuple(bounds)
            bounds.append(float(value))
        scale *= 10


def default_buckets(max_model_len: int) -> dict[str, BucketBounds]:
    """Return the default bounds of every bucket family, keyed in table order."""
    request_tokens = build_1_2_5_buckets(max_model_len)
    return {
        key: request_tokens if key == REQUEST_TOKENS else _FIXED_BUCKETS[key]
        for key in BUCKET_FAMILY_KEYS
    }


def resolve_buckets(
    max_model_len: int, custom: Mapping[str, Sequence[float]] | None = None
) -> dict[str, BucketBounds]:
    """Return the bounds of every bucket family, with `custom` replacing whole families.

    Raises ValueError for an unknown family key or invalid bounds, and
    TypeError for a bound that is not a number.
    """
    resolved = default_buckets(max_model_len)
    for key, values in (custom or {}).items():
        _check_key(key)
        resolved[key] = validate_bounds(key, values)
    return resolved


def validate_bounds(key: str, values: Sequence[float]) -> BucketBounds:
    """Return `values` as float bounds after checking them for the family `key`.

    The bounds must be a non-empty list of finite, positive, strictly
    increasing numbers. The `+Inf` bucket is implicit and must not be listed.
    """
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise TypeError(
            f"invalid custom buckets for {key}: expected a list of numbers, "
            f"got {type(values).__name__} {values!r}"
        )
    if not values:
        raise ValueError(
            f"invalid custom buckets for {key}: the list is empty; give at least one bound"
        )
    bounds = tuple(_check_bound(key, value) for value in values)
    for lower, upper in itertools.pairwise(bounds):
        if upper <= lower:
            raise ValueError(
                f"invalid custom buckets for {key}: {upper!r} follows {lower!r}; "
                f"list each bound once, in increasing order"
            )
    return bounds


def parse_custom_buckets(text: str) -> dict[str, BucketBounds]:
    """Parse and validate the JSON map given to `--custom-histogram-buckets`.

    Example: `{"time_to_first_token": [0.1, 0.5, 1]}`. Every error is a
    ValueError that names the option and the bad value.
    """
    try:
        document = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"invalid --custom-histogram-buckets {text!r}: not valid JSON ({error}); "
            f'expected an object such as {{"time_to_first_token": [0.1, 0.5, 1]}}'
        ) from error
    if not isinstance(document, dict):
        raise ValueError(
            f"invalid --custom-histogram-buckets {text!r}: expected a JSON object "
            f"that maps bucket family keys to lists of bounds, got {type(document).__name__}"
        )
    parsed: dict[str, BucketBounds] = {}
    for key, values in document.items():
        _check_key(key)
        _check_json_list(key, values)
        parsed[key] = validate_bounds(key, values)
    return parsed


def _check_max_model_len(max_model_len: int) -> None:
    if isinstance(max_model_len, bool) or not isinstance(max_model_len, int):
        raise TypeError(
            f"max_model_len must be an int, got {type(max_model_len).__name__} {max_model_len!r}"
        )
    if max_model_len < 1:
        raise ValueError(
            f"max_model_len must be at least 1 token, got {max_model_len}; "
            f"give the model's context length"
        )


def _check_key(key: str) -> None:
    if key not in BUCKET_FAMILY_KEYS:
        raise ValueError(
            f"unknown bucket family {key!r} in custom buckets; "
            f"use one of: {', '.join(BUCKET_FAMILY_KEYS)}"
        )


def _check_bound(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"invalid custom buckets for {key}: bound {value!r} is a "
            f"{type(value).__name__}; give numbers"
        )
    bound = float(value)
    if not math.isfinite(bound):
        raise ValueError(
            f"invalid custom buckets for {key}: bound {value!r} is not finite; "
            f"give finite bounds (the +Inf bucket is always added)"
        )
    if bound <= 0:
        raise ValueError(
            f"invalid custom buckets for {key}: bound {value!r} is not positive; "
            f"give bounds greater than 0"
        )
    return bound


def _check_json_list(key: str, values: Any) -> None:
    if not isinstance(values, list):
        raise ValueError(
            f"invalid --custom-histogram-buckets entry {key!r}: expected a list of "
            f"numbers, got {json.dumps(values)}"
        )
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(
                f"invalid --custom-histogram-buckets entry {key!r}: bound "
                f"{json.dumps(value)} is not a number; give numbers such as 0.5"
            )


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(
                f"invalid --custom-histogram-buckets: key {key!r} appears twice; "
                f"give each bucket family once"
            )
        document[key] = value
    return document
