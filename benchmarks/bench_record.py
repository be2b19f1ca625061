"""Benchmark: the cost of recording one engine step, tpmetrics against prometheus_client.

One engine step here records 20 values, as vLLM's families define them:
10 histogram observations (1 iteration-tokens, 2 time-to-first-token and
7 inter-token-latency observations), 7 counter increments and 3 gauge sets.
tpmetrics records them with one `Reporter.record` call; prometheus_client
with one `observe`, `inc` or `set` call each on children whose labels were
resolved up front. Both run in this process, taking turns.

Run from the repository root: `python benchmarks/bench_record.py [--quick]`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import timeit
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if __package__ in (None, ""):
    # `python benchmarks/bench_record.py` puts benchmarks/, not the repository root, on the path.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (
    PrometheusMetric,
    Timing,
    describe_differences,
    format_ns,
    machine_facts,
    parse_samples,
    prometheus_metric,
    time_interleaved,
)
from tpmetrics.aggregator.exposition import make_registry, render
from tpmetrics.aggregator.state import MergeState
from tpmetrics.catalog import Catalog
from tpmetrics.snapshot import SourceId, SourceKind
from tpmetrics.workers.reporter import Reporter, Series

MODEL = "llama"
ENGINE = "0"
SNAPSHOT_INTERVAL_S = 0.001
FAST_SWITCH_INTERVAL_S = 0.00025


@dataclass(frozen=True, slots=True)
class StepValues:
    """The stats of one engine step, which both recorders are given.

    The default is a mixed batch of 9 running requests. 2 prefills of 512
    prompt tokens, each with 128 tokens found in the prefix cache, produce
    their first tokens, and 7 decodes produce one token each.
    """

    iteration_tokens: float = 777
    time_to_first_tokens: tuple[float, ...] = (0.084, 0.131)
    inter_token_latencies: tuple[float, ...] = (0.021, 0.019, 0.024, 0.033, 0.018, 0.027, 0.022)
    prompt_tokens: float = 1024
    prompt_tokens_computed: float = 768
    prompt_tokens_cached: float = 256
    generation_tokens: float = 9
    prefix_cache_queries: float = 1024
    prefix_cache_hits: float = 256
    num_running: float = 9
    num_waiting: float = 3
    kv_cache_usage: float = 0.42


Pair = tuple[Series, float]


@dataclass(frozen=True, slots=True)
class RecordArguments:
    """The keyword arguments of one `Reporter.record` call, except `step`."""

    counters: list[Pair]
    observations: list[Pair]
    gauges: list[Pair]

    def describe(self) -> str:
        return (
            f"{len(self.observations)} histogram observations, "
            f"{len(self.counters)} counter increments, {len(self.gauges)} gauge sets"
        )

    def __len__(self) -> int:
        return len(self.counters) + len(self.observations) + len(self.gauges)


class TpmetricsStep:
    """Records a step through `Reporter.record`, with every series handle created up front."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.iteration_tokens = reporter.series("vllm:iteration_tokens_total")
        self.time_to_first_token = reporter.series("vllm:time_to_first_token_seconds")
        self.inter_token_latency = reporter.series("vllm:inter_token_latency_seconds")
        self.prompt_tokens = reporter.series("vllm:prompt_tokens")
        self.prompt_tokens_computed = reporter.series(
            "vllm:prompt_tokens_by_source", source="local_compute"
        )
        self.prompt_tokens_cache_hit = reporter.series(
            "vllm:prompt_tokens_by_source", source="local_cache_hit"
        )
        self.prompt_tokens_cached = reporter.series("vllm:prompt_tokens_cached")
        self.generation_tokens = reporter.series("vllm:generation_tokens")
        self.prefix_cache_queries = reporter.series("vllm:prefix_cache_queries")
        self.prefix_cache_hits = reporter.series("vllm:prefix_cache_hits")
        self.num_running = reporter.series("vllm:num_requests_running")
        self.num_waiting = reporter.series("vllm:num_requests_waiting")
        self.kv_cache_usage = reporter.series("vllm:kv_cache_usage_perc")

    def arguments(self, values: StepValues) -> RecordArguments:
        """Pair each value of the step with its series handle."""
        observations = [(self.iteration_tokens, values.iteration_tokens)]
        observations += [(self.time_to_first_token, v) for v in values.time_to_first_tokens]
        observations += [(self.inter_token_latency, v) for v in values.inter_token_latencies]
        counters = [
            (self.prompt_tokens, values.prompt_tokens),
            (self.prompt_tokens_computed, values.prompt_tokens_computed),
            (self.prompt_tokens_cache_hit, values.prompt_tokens_cached),
            (self.prompt_tokens_cached, values.prompt_tokens_cached),
            (self.generation_tokens, values.generation_tokens),
            (self.prefix_cache_queries, values.prefix_cache_queries),
            (self.prefix_cache_hits, values.prefix_cache_hits),
        ]
        gauges = [
            (self.num_running, values.num_running),
            (self.num_waiting, values.num_waiting),
            (self.kv_cache_usage, values.kv_cache_usage),
        ]
        return RecordArguments(counters, observations, gauges)

    def record(self, step: int, values: StepValues) -> None:
        """Build the step's argument lists from `values` and record them in one call."""
        arguments = self.arguments(values)
        self.reporter.record(
            step=step,
            counters=arguments.counters,
            observations=arguments.observations,
            gauges=arguments.gauges,
        )


MetricT = TypeVar("MetricT", Counter, Gauge, Histogram)


class PrometheusStep:
    """Records a step through prometheus_client children whose labels are resolved up front."""

    def __init__(self, catalog: Catalog, registry: CollectorRegistry) -> None:
        self._catalog = catalog
        self._registry = registry
        self._metrics: dict[str, PrometheusMetric] = {}
        self.iteration_tokens = self._child(Histogram, "vllm:iteration_tokens_total")
        self.time_to_first_token = self._child(Histogram, "vllm:time_to_first_token_seconds")
        self.inter_token_latency = self._child(Histogram, "vllm:inter_token_latency_seconds")
        self.prompt_tokens = self._child(Counter, "vllm:prompt_tokens")
        self.prompt_tokens_computed = self._child(
            Counter, "vllm:prompt_tokens_by_source", source="local_compute"
        )
        self.prompt_tokens_cache_hit = self._child(
            Counter, "vllm:prompt_tokens_by_source", source="local_cache_hit"
        )
        self.prompt_tokens_cached = self._child(Counter, "vllm:prompt_tokens_cached")
        self.generation_tokens = self._child(Counter, "vllm:generation_tokens")
        self.prefix_cache_queries = self._child(Counter, "vllm:prefix_cache_queries")
        self.prefix_cache_hits = self._child(Counter, "vllm:prefix_cache_hits")
        self.num_running = self._child(Gauge, "vllm:num_requests_running")
        self.num_waiting = self._child(Gauge, "vllm:num_requests_waiting")
        self.kv_cache_usage = self._child(Gauge, "vllm:kv_cache_usage_perc")

    def _child(self, kind: type[MetricT], family: str, **labels: str) -> MetricT:
        metric = self._metrics.get(family)
        if metric is None:
            metric = prometheus_metric(self._catalog.family(family), self._catalog, self._registry)
            self._metrics[family] = metric
        if not isinstance(metric, kind):
            raise TypeError(f"{family} is a {type(metric).__name__}, expected {kind.__name__}")
        return metric.labels(model_name=MODEL, engine=ENGINE, **labels)

    def record(self, values: StepValues) -> None:
        """Record `values` with one prometheus_client call per observation."""
        self.iteration_tokens.observe(values.iteration_tokens)
        for value in values.time_to_first_tokens:
            self.time_to_first_token.observe(value)
        for value in values.inter_token_latencies:
            self.inter_token_latency.observe(value)
        self.prompt_tokens.inc(values.prompt_tokens)
        self.prompt_tokens_computed.inc(values.prompt_tokens_computed)
        self.prompt_tokens_cache_hit.inc(values.prompt_tokens_cached)
        self.prompt_tokens_cached.inc(values.prompt_tokens_cached)
        self.generation_tokens.inc(values.generation_tokens)
        self.prefix_cache_queries.inc(values.prefix_cache_queries)
        self.prefix_cache_hits.inc(values.prefix_cache_hits)
        self.num_running.set(values.num_running)
        self.num_waiting.set(values.num_waiting)
        self.kv_cache_usage.set(values.kv_cache_usage)


def new_reporter(catalog: Catalog) -> Reporter:
    """Return a reporter for engine 0 with no sink, so nothing flushes in the background."""
    return Reporter(SourceId(SourceKind.ENGINE, MODEL, engine=int(ENGINE)), catalog)


def check_same_totals(catalog: Catalog, values: StepValues, steps: int) -> None:
    """Record `steps` steps both ways and raise RuntimeError unless the expositions match."""
    tpmetrics = TpmetricsStep(new_reporter(catalog))
    registry = CollectorRegistry()
    prometheus = PrometheusStep(catalog, registry)
    for step in range(1, steps + 1):
        tpmetrics.record(step, values)
        prometheus.record(values)
    state = MergeState()
    state.apply(tpmetrics.reporter.snapshot(), now=0.0)
    body, _ = render(make_registry(state, clock=lambda: 0.0))
    merged = {
        key: value
        for key, value in parse_samples(body.decode()).items()
        if not key[0].startswith("tpmetrics_")
    }
    expected = parse_samples(generate_latest(registry).decode())
    if merged != expected:
        raise RuntimeError(
            "tpmetrics and prometheus_client recorded different values: "
            + describe_differences(merged, expected)
        )


class SnapshotThread(threading.Thread):
    """Calls `reporter.snapshot()` every `interval_s` seconds until stopped, as a flusher does."""

    def __init__(self, reporter: Reporter, interval_s: float) -> None:
        super().__init__(name="snapshot-loop", daemon=True)
        self._reporter = reporter
        self._interval_s = interval_s
        self._stop_event = threading.Event()
        self.snapshots = 0

    def run(self) -> None:
        # Snapshots are due on a fixed grid, so a late wake-up shortens the next wait.
        # A wake-up later than a whole interval takes one snapshot, not a burst of them.
        deadline = time.monotonic()
        while True:
            deadline = max(deadline + self._interval_s, time.monotonic())
            if self._stop_event.wait(max(0.0, deadline - time.monotonic())):
                return
            self._reporter.snapshot()
            self.snapshots += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass(frozen=True, slots=True)
class ContentionResult:
    timing: Timing
    snapshots_per_s: float


def time_contention(
    step: TpmetricsStep,
    values: StepValues,
    number: int,
    repeat: int,
    switch_interval_s: float | None = None,
) -> ContentionResult:
    """Time `record` while another thread takes a snapshot of the same reporter every 1 ms.

    With `switch_interval_s` set, the interpreter's GIL switch interval is set
    to it for the run. At the default of 5 ms, a snapshot thread that wakes up
    waits for the recording thread to hand over the GIL, so it takes far fewer
    than 1000 snapshots a second.
    """
    thread = SnapshotThread(step.reporter, SNAPSHOT_INTERVAL_S)
    timer = timeit.Timer(lambda: step.record(1, values))
    default_interval_s = sys.getswitchinterval()
    if switch_interval_s is not None:
        sys.setswitchinterval(switch_interval_s)
    thread.start()
    try:
        started = timeit.default_timer()
        seconds = timer.repeat(repeat=repeat, number=number)
        elapsed = timeit.default_timer() - started
    finally:
        thread.stop()
        sys.setswitchinterval(default_interval_s)
    per_call = [total / number for total in seconds]
    return ContentionResult(Timing.of(per_call), thread.snapshots / elapsed)


def time_snapshot(step: TpmetricsStep, values: StepValues, repeat: int) -> Timing:
    """Time one `snapshot()` of a reporter that has just recorded one step."""
    timer = timeit.Timer(step.reporter.snapshot, setup=lambda: step.record(1, values))
    return Timing.of(timer.repeat(repeat=repeat, number=1))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="run 3 short repeats instead of the full measurement"
    )
    parser.add_argument("--steps", type=int, help="steps recorded per repeat (default 10000)")
    parser.add_argument("--repeat", type=int, help="timed repeats of each case (default 21)")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 300 if args.quick else 10000
    if args.repeat is None:
        args.repeat = 3 if args.quick else 21
    if args.steps < 1 or args.repeat < 1:
        parser.error(f"--steps and --repeat must be at least 1, got {args.steps} and {args.repeat}")
    return args


@dataclass(frozen=True, slots=True)
class RecordResult:
    """Per-step timings keyed by case, and the snapshot rates of the contention runs."""

    timings: dict[str, Timing]
    snapshots_per_s: dict[str, float]
    snapshot: Timing


def measure(catalog: Catalog, values: StepValues, steps: int, repeat: int) -> RecordResult:
    """Time every case: the three recorders taking turns, then the contention runs."""
    tpmetrics = TpmetricsStep(new_reporter(catalog))
    prebuilt = TpmetricsStep(new_reporter(catalog))
    arguments = prebuilt.arguments(values)
    prometheus = PrometheusStep(catalog, CollectorRegistry())

    timings = time_interleaved(
        {
            "tpmetrics": lambda: tpmetrics.record(1, values),
            "prebuilt": lambda: prebuilt.reporter.record(
                step=1,
                counters=arguments.counters,
                observations=arguments.observations,
                gauges=arguments.gauges,
            ),
            "prometheus": lambda: prometheus.record(values),
        },
        number=steps,
        repeat=repeat,
    )

    contention = time_contention(tpmetrics, values, steps, repeat)
    fast_switch = time_contention(
        tpmetrics, values, steps, repeat, switch_interval_s=FAST_SWITCH_INTERVAL_S
    )
    timings["contention"] = contention.timing
    timings["fast switch"] = fast_switch.timing
    snapshots_per_s = {
        "contention": contention.snapshots_per_s,
        "fast switch": fast_switch.snapshots_per_s,
    }

    snapshot = time_snapshot(tpmetrics, values, repeat=max(repeat, 100))
    return RecordResult(timings, snapshots_per_s, snapshot)


RECORD_ROWS = (
    ("tpmetrics", "tpmetrics Reporter.record"),
    ("prebuilt", "tpmetrics Reporter.record, argument lists prebuilt"),
    ("prometheus", "prometheus_client observe/inc/set"),
    ("contention", "tpmetrics Reporter.record, snapshot() every 1 ms"),
    ("fast switch", "  same, GIL switch interval 0.25 ms"),
)


def print_report(
    args: argparse.Namespace, arguments: RecordArguments, result: RecordResult
) -> None:
    observations = len(arguments)
    print(f"machine: {machine_facts()}")
    print(
        f"one step: {observations} observations ({arguments.describe()}); "
        f"{args.repeat} repeats x {args.steps} steps, cases interleaved"
    )
    print(f"{'case':<52} {'ns/step':>21} {'ns/observation':>19}")
    print(f"{'':<52} {'min':>10} {'median':>10} {'min':>9} {'median':>9}")
    for key, label in RECORD_ROWS:
        timing = result.timings[key]
        print(
            f"{label:<52} {format_ns(timing.min_s):>10} {format_ns(timing.median_s):>10} "
            f"{format_ns(timing.min_s / observations):>9} "
            f"{format_ns(timing.median_s / observations):>9}"
        )
    tpmetrics, prometheus = result.timings["tpmetrics"], result.timings["prometheus"]
    print(
        f"ratio tpmetrics / prometheus_client: {tpmetrics.min_s / prometheus.min_s:.2f} (min), "
        f"{tpmetrics.median_s / prometheus.median_s:.2f} (median)"
    )
    print(
        "snapshots taken per second during the contention runs: "
        f"{result.snapshots_per_s['contention']:,.0f} (default GIL switch interval "
        f"{sys.getswitchinterval() * 1e3:g} ms), "
        f"{result.snapshots_per_s['fast switch']:,.0f} (0.25 ms)"
    )
    print(
        f"Reporter.snapshot() after one step: {format_ns(result.snapshot.min_s)} ns min, "
        f"{format_ns(result.snapshot.median_s)} ns median"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print its figures and return the exit status."""
    args = parse_args(argv)
    catalog = Catalog()
    values = StepValues()
    check_same_totals(catalog, values, steps=3)
    result = measure(catalog, values, args.steps, args.repeat)
    arguments = TpmetricsStep(new_reporter(catalog)).arguments(values)
    print_report(args, arguments, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
