"""Families that vLLM lacks: per-rank timings, TP skew and the aggregator's own health.

Engine data uses the prefix `tpmetrics:`. The aggregator's self-metrics use
`tpmetrics_` and live in `SELF_FAMILIES`: the aggregator exports them
itself, and no source reports them.
"""

from __future__ import annotations

from tpmetrics.catalog.types import Family, MetricType, Reducer, Scope

RANK_LABELS: tuple[str, ...] = ("model_name", "engine", "rank")

_G = MetricType.GAUGE
_C = MetricType.COUNTER
_H = MetricType.HISTOGRAM

TPMETRICS_FAMILIES: tuple[Family, ...] = (
    Family(
        "tpmetrics:rank_step_time_seconds", _H,
        "Wall-clock time of each engine step on one TP rank, compute and "
        "collectives together, in seconds.",
        RANK_LABELS, Scope.RANK, bucket_family="step_time",
    ),
    Family(
        "tpmetrics:rank_collective_time_seconds", _H,
        "Time each engine step spent in collective operations on one TP rank, in seconds.",
        RANK_LABELS, Scope.RANK, bucket_family="step_time",
    ),
    Family(
        "tpmetrics:rank_forward_time_seconds", _H,
        "Compute time of each engine step on one TP rank, collectives excluded, in seconds.",
        RANK_LABELS, Scope.RANK, bucket_family="step_time",
    ),
    Family(
        "tpmetrics:rank_steps", _C,
        "Engine steps that one TP rank ran.",
        RANK_LABELS, Scope.RANK,
    ),
    Family(
        "tpmetrics:rank_tokens", _C,
        "Tokens that one TP rank processed.",
        RANK_LABELS, Scope.RANK,
    ),
    Family(
        "tpmetrics:rank_last_step_time_seconds", _G,
        "Wall-clock time of the last engine step on one TP rank, in seconds.",
        RANK_LABELS, Scope.RANK, reducer=Reducer.LATEST,
    ),
    Family(
        "tpmetrics:tp_step_time_skew_ratio", _G,
        "Last step time of the slowest live TP rank of the engine divided by "
        "that of the fastest; 1 means the ranks are balanced.",
        ("model_name", "engine"), Scope.ENGINE, reducer=Reducer.MAX, derived=True,
    ),
)  # fmt: skip
"""tpmetrics' own engine-data families, in table order."""

SELF_FAMILIES: tuple[Family, ...] = (
    Family(
        "tpmetrics_snapshots_accepted", _C,
        "Snapshots the aggregator accepted, by source kind.",
        ("model_name", "kind"),
    ),
    Family(
        "tpmetrics_snapshots_rejected", _C,
        "Snapshots the aggregator rejected whole, by reason.",
        ("model_name", "reason"),
    ),
    Family(
        "tpmetrics_samples_rejected", _C,
        "Samples the aggregator rejected from otherwise accepted snapshots, by reason.",
        ("model_name", "reason"),
    ),
    Family(
        "tpmetrics_live_sources", _G,
        "Sources whose latest snapshot is within the time-to-live, by source kind.",
        ("model_name", "kind"), reducer=Reducer.SUM,
    ),
    Family(
        "tpmetrics_last_flush_age_seconds", _G,
        "Seconds since the last flush of the live source of this kind that "
        "flushed least recently.",
        ("model_name", "kind"), reducer=Reducer.MAX,
    ),
    Family(
        "tpmetrics_reporter_dropped_snapshots", _C,
        "Snapshots that reporters dropped instead of sending, by source kind.",
        ("model_name", "kind"),
    ),
    Family(
        "tpmetrics_reporter_dropped_observations", _C,
        "Observations that reporters dropped instead of recording, by source kind.",
        ("model_name", "kind"),
    ),
)  # fmt: skip
"""The aggregator's self-metrics, in table order."""
