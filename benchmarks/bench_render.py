"""Benchmark: rendering `/metrics` for 64 engines x TP 8, tpmetrics against prometheus_client.

Each engine has one engine source and one rank source per TP rank. The
engine source reports every engine-scope vLLM family of the catalog, with
every value of its extra labels (every finished_reason, every prompt-token
source, ...). The rank sources report the per-rank `tpmetrics:` families.
Their snapshots feed a `MergeState`, which is rendered with
`render(make_registry(state))`. The same
stats are recorded into one prometheus_client registry with the same
families, label sets and values, which `generate_latest` renders. The script
checks that both expositions contain the same samples before it times them.

Run from the repository root: `python benchmarks/bench_render.py [--quick]`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import random
import sys
import timeit
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families

if __package__ in (None, ""):
    # `python benchmarks/bench_render.py` puts benchmarks/, not the repository root, on the path.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (
    PrometheusMetric,
    Timing,
    describe_differences,
    machine_facts,
    parse_samples,
    prometheus_metric,
    time_interleaved,
)
from tpmetrics.aggregator.exposition import make_registry, render
from tpmetrics.aggregator.state import MergeState
from tpmetrics.catalog import Catalog
from tpmetrics.catalog.types import Family, Scope
from tpmetrics.snapshot import Snapshot, SourceId, SourceKind
from tpmetrics.workers.reporter import Reporter, Series

MODEL = "llama"
NOW = 0.0
"""The aggregator's clock, in seconds, for every apply and render, so no gauge expires."""

OBSERVATIONS_PER_ROUND = 4
"""Observations each histogram series gets per round of the workload."""

SOURCE_LABELS = frozenset({"model_name", "engine", "rank"})

EXTRA_LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "reason": ("capacity", "deferred"),
    "sleep_state": ("awake", "weights_offloaded", "discard_all"),
    "source": ("local_compute", "local_cache_hit", "external_kv_transfer"),
    "finished_reason": ("stop", "length", "abort", "error"),
    # Three speculative tokens per draft.
    "position": ("0", "1", "2"),
    # NOTE: illustrative stage names. The render cost depends on how many
    # series there are and how long their label values are, not on the names.
    "stage": ("waiting_to_start", "in_progress", "completed_waiting"),
}
"""The values of each label that a family adds after model_name and engine."""

CACHE_CONFIG_LABELS: dict[str, str] = {
    "block_size": "16",
    "cache_dtype": "auto",
    "enable_prefix_caching": "True",
    "gpu_memory_utilization": "0.9",
    "num_gpu_blocks": "32768",
    "num_cpu_blocks": "0",
    "prefix_caching_hash_algo": "sha256",
    "kv_cache_size_tokens": "524288",
}
"""The one label set of `vllm:cache_config_info`, for a KV cache of 32768 blocks of 16 tokens."""


def extra_label_sets(family: Family) -> list[dict[str, str]]:
    """Return every set of extra labels (after model_name, engine and rank) `family` gets."""
    extra = [name for name in family.labelnames if name not in SOURCE_LABELS]
    if family.name == "vllm:cache_config_info":
        return [dict(CACHE_CONFIG_LABELS)]
    if not extra:
        return [{}]
    values = EXTRA_LABEL_VALUES.get(extra[0]) if len(extra) == 1 else None
    if values is None:
        raise ValueError(
            f"no label values for {family.name} labels {extra}: "
            "add them to EXTRA_LABEL_VALUES in benchmarks/bench_render.py"
        )
    return [{extra[0]: value} for value in values]


@dataclass(slots=True)
class PlannedSeries:
    """One series of one source, as a reporter handle and a prometheus_client child."""

    family: Family
    labels: dict[str, str]
    handle: Series
    child: PrometheusMetric


@dataclass(slots=True)
class SourcePlan:
    reporter: Reporter
    series: list[PlannedSeries]


class Workload:
    """Sources that record the same random stats in tpmetrics reporters and in one registry.

    The registry is a prometheus_client `CollectorRegistry` with every family
    and label set the sources report.
    """

    def __init__(self, engines: int, tp: int, seed: int = 0) -> None:
        self.catalog = Catalog()
        self.registry = CollectorRegistry()
        self._rng = random.Random(seed)
        self._metrics: dict[str, PrometheusMetric] = {}
        self._round = 0
        engine_families = [
            f for f in self.catalog if f.name.startswith("vllm:") and f.scope is Scope.ENGINE
        ]
        rank_families = [f for f in self.catalog if f.scope is Scope.RANK and not f.derived]
        self.sources: list[SourcePlan] = []
        for engine in range(engines):
            source = SourceId(SourceKind.ENGINE, MODEL, engine=engine)
            self.sources.append(self._plan(source, engine_families))
            for rank in range(tp):
                source = SourceId(SourceKind.RANK, MODEL, engine=engine, rank=rank)
                self.sources.append(self._plan(source, rank_families))

    def _plan(self, source: SourceId, families: list[Family]) -> SourcePlan:
        reporter = Reporter(source, self.catalog, incarnation=f"{source.engine}-{source.rank}")
        planned: list[PlannedSeries] = []
        for family in families:
            for extra in extra_label_sets(family):
                labels = {"model_name": MODEL, "engine": str(source.engine), **extra}
                if "rank" in family.labelnames:
                    labels["rank"] = str(source.rank)
                handle = reporter.series(family.name, **extra)
                child = self._metric(family).labels(**labels)
                planned.append(PlannedSeries(family, labels, handle, child))
        return SourcePlan(reporter, planned)

    def _metric(self, family: Family) -> PrometheusMetric:
        metric = self._metrics.get(family.name)
        if metric is None:
            metric = prometheus_metric(family, self.catalog, self.registry)
            self._metrics[family.name] = metric
        return metric

    def advance(self) -> list[Snapshot]:
        """Record one round of stats on every source, both ways, and return the snapshots."""
        self._round += 1
        return [self._record(plan) for plan in self.sources]

    def _record(self, plan: SourcePlan) -> Snapshot:
        counters: list[tuple[Series, float]] = []
        observations: list[tuple[Series, float]] = []
        gauges: list[tuple[Series, float]] = []
        for series in plan.series:
            child = series.child
            if isinstance(child, Counter):
                amount = float(self._rng.randrange(1, 1000))
                counters.append((series.handle, amount))
                child.inc(amount)
            elif isinstance(child, Gauge):
                value = self._gauge_value(series)
                gauges.append((series.handle, value))
                child.set(value)
            else:
                for value in self._histogram_values(series.family):
                    observations.append((series.handle, value))
                    child.observe(value)
        plan.reporter.record(
            step=self._round, counters=counters, observations=observations, gauges=gauges
        )
        return plan.reporter.snapshot()

    def _gauge_value(self, series: PlannedSeries) -> float:
        name = series.family.name
        if name == "vllm:cache_config_info":
            return 1.0
        if name == "vllm:engine_sleep_state":
            return float(series.labels["sleep_state"] == "awake")
        if name.endswith(("_perc", "_seconds")):
            return self._rng.random()
        return float(self._rng.randrange(0, 64))

    def _histogram_values(self, family: Family) -> list[float]:
        # Log-uniform between half the first bound and twice the last, so
        # every bucket, +Inf included, gets some observations.
        bounds = self.catalog.bounds(family.name)
        low, high = math.log(bounds[0] / 2), math.log(bounds[-1] * 2)
        return [math.exp(self._rng.uniform(low, high)) for _ in range(OBSERVATIONS_PER_ROUND)]


def copy_aggregator_families(text: str, catalog: Catalog, registry: CollectorRegistry) -> None:
    """Declare in `registry` the families only the aggregator renders, with the values in `text`.

    These are the aggregator's self-metrics and the TP skew, which no source
    reports, so the prometheus_client registry takes their values from the
    tpmetrics exposition.
    """
    families = {family.name: family for family in catalog.self_families}
    families |= {family.name: family for family in catalog if family.derived}
    for parsed in text_string_to_metric_families(text):
        family = families.get(parsed.name)
        if family is None:
            continue
        metric = prometheus_metric(family, catalog, registry)
        for sample in parsed.samples:
            child = metric.labels(**sample.labels)
            if isinstance(child, Counter):
                child.inc(sample.value)
            elif isinstance(child, Gauge):
                child.set(sample.value)
            else:
                raise TypeError(f"cannot copy histogram {family.name}: expected a counter or gauge")


@dataclass(frozen=True, slots=True)
class ExpositionSize:
    series: int
    samples: int
    size_bytes: int

    @classmethod
    def of(cls, body: bytes) -> ExpositionSize:
        series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        samples = 0
        for metric in text_string_to_metric_families(body.decode()):
            for sample in metric.samples:
                samples += 1
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                series.add((metric.name, labels))
        return cls(len(series), samples, len(body))


@contextlib.contextmanager
def created_samples(enabled: bool) -> Iterator[None]:
    """Switch prometheus_client's `_created` samples on or off, then back to the process default.

    The default is read from PROMETHEUS_DISABLE_CREATED_SERIES, as
    prometheus_client 0.26 reads it at import.
    """
    if enabled:
        enable_created_metrics()  # type: ignore[no-untyped-call]
    else:
        disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        disabled = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower()
        if disabled in ("true", "1", "t"):
            disable_created_metrics()  # type: ignore[no-untyped-call]
        else:
            enable_created_metrics()  # type: ignore[no-untyped-call]


def apply_round(state: MergeState, snapshots: Sequence[Snapshot]) -> float:
    """Apply every snapshot of one round and return the seconds it took.

    The garbage collector is off while it times, as `timeit` has it for the
    render timings.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        started = timeit.default_timer()
        for snapshot in snapshots:
            state.apply(snapshot, now=NOW)
        return timeit.default_timer() - started
    finally:
        if gc_was_enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class ApplyResult:
    first_round_s: float
    steady: Timing
    snapshots: int
    samples: int


def time_apply(workload: Workload, state: MergeState, rounds: int) -> ApplyResult:
    """Apply a first round, which creates every series, then time `rounds` more rounds."""
    first = workload.advance()
    first_round_s = apply_round(state, first)
    seconds = [apply_round(state, workload.advance()) for _ in range(rounds)]
    samples = sum(len(snapshot.samples) for snapshot in first)
    return ApplyResult(first_round_s, Timing.of(seconds), len(first), samples)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="run 3 repeats on 8 engines x TP 8 instead of 7 on 64"
    )
    parser.add_argument(
        "--engines", type=int, help="number of engines, or DP ranks (default 64, 8 with --quick)"
    )
    parser.add_argument("--tp", type=int, default=8, help="TP ranks per engine (default 8)")
    parser.add_argument("--repeat", type=int, help="timed repeats of each case (default 7)")
    args = parser.parse_args(argv)
    if args.engines is None:
        args.engines = 8 if args.quick else 64
    if args.repeat is None:
        args.repeat = 3 if args.quick else 7
    if args.engines < 1 or args.tp < 1 or args.repeat < 1:
        parser.error(
            f"--engines, --tp and --repeat must be at least 1, "
            f"got {args.engines}, {args.tp} and {args.repeat}"
        )
    return args


def check_same_samples(tpmetrics_body: bytes, prometheus_body: bytes) -> None:
    """Raise RuntimeError unless both expositions contain the same samples with the same values."""
    merged = parse_samples(tpmetrics_body.decode())
    expected = parse_samples(prometheus_body.decode())
    if merged != expected:
        raise RuntimeError(
            "the tpmetrics and prometheus_client expositions differ: "
            + describe_differences(merged, expected)
        )


@dataclass(frozen=True, slots=True)
class RenderResult:
    """Render timings and exposition sizes, keyed by case."""

    timings: dict[str, Timing]
    sizes: dict[str, ExpositionSize]


def time_render(workload: Workload, state: MergeState, repeat: int) -> RenderResult:
    """Time both renders and both collects alone, taking turns, then prometheus_client's default."""

    def render_tpmetrics() -> bytes:
        body, _ = render(make_registry(state, clock=lambda: NOW))
        return body

    registry = workload.registry
    with created_samples(enabled=False):
        copy_aggregator_families(render_tpmetrics().decode(), workload.catalog, registry)
        bodies = {"tpmetrics": render_tpmetrics(), "prometheus": generate_latest(registry)}
        check_same_samples(bodies["tpmetrics"], bodies["prometheus"])
        timings = time_interleaved(
            {
                "tpmetrics": render_tpmetrics,
                "prometheus": lambda: generate_latest(registry),
                "tpmetrics collect": lambda: list(make_registry(state, lambda: NOW).collect()),
                "prometheus collect": lambda: list(registry.collect()),
            },
            number=1,
            repeat=repeat,
        )
    with created_samples(enabled=True):
        bodies["prometheus created"] = generate_latest(registry)
        created = time_interleaved(
            {"prometheus created": lambda: generate_latest(registry)}, number=1, repeat=repeat
        )
    sizes = {name: ExpositionSize.of(body) for name, body in bodies.items()}
    return RenderResult(timings | created, sizes)


RENDER_ROWS = (
    ("tpmetrics", "tpmetrics render(make_registry(state))"),
    ("prometheus", "prometheus_client generate_latest"),
    ("prometheus created", "  same, with _created samples"),
    ("tpmetrics collect", "tpmetrics collect only"),
    ("prometheus collect", "prometheus_client collect only"),
)


def print_report(args: argparse.Namespace, applied: ApplyResult, result: RenderResult) -> None:
    print(f"machine: {machine_facts()}")
    print(
        f"{args.engines} engines x TP {args.tp}: {applied.snapshots} sources, "
        f"{applied.samples:,} samples per round of snapshots; {args.repeat} repeats"
    )
    print(f"{'case':<40} {'min ms':>9} {'median ms':>9} {'series':>8} {'samples':>8} {'bytes':>11}")
    for key, label in RENDER_ROWS:
        timing = result.timings[key]
        size = result.sizes.get(key)
        sizes = f"{size.series:>8,} {size.samples:>8,} {size.size_bytes:>11,}" if size else ""
        row = f"{label:<40} {timing.min_s * 1e3:>9.1f} {timing.median_s * 1e3:>9.1f} {sizes}"
        print(row.rstrip())
    tpmetrics, prometheus = result.timings["tpmetrics"], result.timings["prometheus"]
    print(
        f"ratio tpmetrics / prometheus_client: {tpmetrics.min_s / prometheus.min_s:.2f} (min), "
        f"{tpmetrics.median_s / prometheus.median_s:.2f} (median)"
    )
    print(
        f"apply one round of {applied.snapshots} snapshots to the MergeState: "
        f"first round (creates every series) {applied.first_round_s * 1e3:.1f} ms; "
        f"later rounds {applied.steady.min_s * 1e3:.1f} ms min, "
        f"{applied.steady.median_s * 1e3:.1f} ms median"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print its figures and return the exit status."""
    args = parse_args(argv)
    workload = Workload(args.engines, args.tp)
    state = MergeState()
    applied = time_apply(workload, state, rounds=args.repeat)
    result = time_render(workload, state, args.repeat)
    print_report(args, applied, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
