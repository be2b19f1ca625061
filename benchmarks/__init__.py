"""Helpers shared by the benchmark scripts: machine facts, interleaved timing, parsed samples.

The scripts run from the repository root as `python benchmarks/bench_record.py`
and `python benchmarks/bench_render.py`; docs/benchmarks.md explains what
each one measures.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
import timeit
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from tpmetrics.catalog import Catalog
from tpmetrics.catalog.types import Family, MetricType

SampleKey = tuple[str, tuple[tuple[str, str], ...]]
"""A sample name and its labels, sorted by label name."""


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or from `platform` without that file."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    return platform.processor() or "unknown"


def machine_facts() -> str:
    """Describe the machine and software the figures were measured with, on one line."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"CPU {cpu_model()}, {cpus} usable cores; "
        f"{platform.python_implementation()} {platform.python_version()}; "
        f"prometheus_client {importlib.metadata.version('prometheus_client')}; "
        f"load average {load_average()}; {datetime.date.today().isoformat()}"
    )


def load_average() -> str:
    """Return the 1-minute load average, which shows other work running during the benchmark."""
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return f"{os.getloadavg()[0]:.2f}"


@dataclass(frozen=True, slots=True)
class Timing:
    """The minimum and median of several timed repeats, in seconds per call."""

    min_s: float
    median_s: float
    repeats: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        return cls(min(seconds), statistics.median(seconds), len(seconds))


def time_interleaved(
    cases: Mapping[str, Callable[[], object]], number: int, repeat: int
) -> dict[str, Timing]:
    """Time every case `repeat` times, `number` calls a repeat, taking turns within each repeat.

    The order of the cases rotates from one repeat to the next, so each case
    meets the same drift in machine load and none always follows another.
    `timeit` switches the garbage collector off while it times a repeat.
    """
    if number < 1 or repeat < 1:
        raise ValueError(f"number and repeat must be at least 1, got {number} and {repeat}")
    names = list(cases)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for index in range(repeat):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            total = timeit.Timer(cases[name]).timeit(number)
            seconds[name].append(total / number)
    return {name: Timing.of(values) for name, values in seconds.items()}


PrometheusMetric = Counter | Gauge | Histogram


def prometheus_metric(
    family: Family, catalog: Catalog, registry: CollectorRegistry
) -> PrometheusMetric:
    """Declare `family` in `registry` as a prometheus_client metric with the catalog's buckets."""
    name, documentation, labels = family.name, family.documentation, family.labelnames
    if family.type is MetricType.COUNTER:
        return Counter(name, documentation, labels, registry=registry)
    if family.type is MetricType.GAUGE:
        return Gauge(name, documentation, labels, registry=registry)
    bounds = catalog.bounds(family.name)
    return Histogram(name, documentation, labels, registry=registry, buckets=bounds)


def parse_samples(text: str) -> dict[SampleKey, float]:
    """Parse text exposition into {(sample name, sorted labels): value}.

    prometheus_client's `_created` samples are left out, because tpmetrics has none.
    """
    samples: dict[SampleKey, float] = {}
    for metric in text_string_to_metric_families(text):
        for sample in metric.samples:
            if not sample.name.endswith("_created"):
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def describe_differences(left: Mapping[SampleKey, float], right: Mapping[SampleKey, float]) -> str:
    """Return a short account of the samples that two parsed expositions disagree on."""
    only_left = sorted(left.keys() - right.keys())
    only_right = sorted(right.keys() - left.keys())
    unequal = sorted(key for key in left.keys() & right.keys() if left[key] != right[key])
    return (
        f"{len(only_left)} samples only in the first (e.g. {only_left[:2]}), "
        f"{len(only_right)} only in the second (e.g. {only_right[:2]}), "
        f"{len(unequal)} with different values (e.g. {unequal[:2]})"
    )


def format_ns(seconds: float) -> str:
    """Format a duration in whole nanoseconds with thousands separators."""
    return f"{seconds * 1e9:,.0f}"
