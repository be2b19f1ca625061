"""Renders the merged state through prometheus_client's own encoders.

`MergedCollector` is a prometheus_client collector over a `MergeState`; it
builds the metric families at each scrape. `render` picks the format from the
`Accept` header exactly as prometheus_client's HTTP handlers do.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from tpmetrics.aggregator.series import CumulativeSeries, GaugeSeries
from tpmetrics.aggregator.state import MergeState
from tpmetrics.catalog import SELF_FAMILIES
from tpmetrics.catalog.types import Family, MetricType

SKEW_FAMILY = "tpmetrics:tp_step_time_skew_ratio"
SKEW_SOURCE_FAMILY = "tpmetrics:rank_last_step_time_seconds"


class MergedCollector(Collector):
    """Collects the merged series of a `MergeState`, plus the aggregator's self-metrics."""

    def __init__(self, state: MergeState, clock: Callable[[], float] = time.monotonic) -> None:
        self._state = state
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        yield from self._cumulative_families()
        yield from self._gauge_families(now)
        yield from self_metric_families(self._state, now)

    def _cumulative_families(self) -> Iterator[Metric]:
        by_family: dict[str, list[CumulativeSeries]] = defaultdict(list)
        for series in self._state.cumulative_series():
            by_family[series.family.name].append(series)
        for _, members in sorted(by_family.items()):
            family = members[0].family
            if family.type is MetricType.COUNTER:
                counter = CounterMetricFamily(
                    family.name, family.documentation, labels=family.labelnames
                )
                for series in sorted(members, key=_labels):
                    counter.add_metric(series.labels, series.value()[0])
                yield counter
            else:
                yield self._histogram(family, members)

    def _histogram(self, family: Family, members: list[CumulativeSeries]) -> Metric:
        histogram = HistogramMetricFamily(
            family.name, family.documentation, labels=family.labelnames
        )
        for series in sorted(members, key=_labels):
            vector = series.value()
            buckets: list[tuple[str, float]] = []
            cumulative = 0.0
            for bound, count in zip((*series.bounds, float("inf")), vector[:-1], strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            histogram.add_metric(series.labels, buckets, sum_value=vector[-1])
        return histogram

    def _gauge_families(self, now: float) -> Iterator[Metric]:
        live = {state.source for state in self._state.live_sources(now)}
        by_family: dict[str, list[tuple[GaugeSeries, float]]] = defaultdict(list)
        for series in self._state.gauge_series():
            value = series.value(live)
            if value is not None:
                by_family[series.family.name].append((series, value))
        for _, members in sorted(by_family.items()):
            family = members[0][0].family
            gauge = GaugeMetricFamily(family.name, family.documentation, labels=family.labelnames)
            for series, value in sorted(members, key=lambda m: m[0].labels):
                gauge.add_metric(series.labels, value)
            yield gauge
        skew = skew_family(self._state, by_family.get(SKEW_SOURCE_FAMILY, []))
        if skew is not None:
            yield skew


def _labels(series: CumulativeSeries) -> tuple[str, ...]:
    return series.labels


def skew_family(
    state: MergeState, last_step_times: Iterable[tuple[GaugeSeries, float]]
) -> Metric | None:
    """Derive the TP skew: the slowest live rank's last step time over the fastest's, per engine."""
    per_engine: dict[tuple[str, str], list[float]] = defaultdict(list)
    for series, value in last_step_times:
        labels = dict(zip(series.family.labelnames, series.labels, strict=True))
        per_engine[(labels["model_name"], labels["engine"])].append(value)
    ratios = {
        engine: max(times) / min(times) for engine, times in per_engine.items() if min(times) > 0
    }
    if not ratios:
        return None
    family = state.catalog(next(iter(ratios))[0]).family(SKEW_FAMILY)
    gauge = GaugeMetricFamily(family.name, family.documentation, labels=family.labelnames)
    for engine, ratio in sorted(ratios.items()):
        gauge.add_metric(engine, ratio)
    return gauge


def self_metric_families(state: MergeState, now: float) -> Iterator[Metric]:
    """Yield the aggregator's own health families."""
    families = {family.name: family for family in SELF_FAMILIES}

    def metric(name: str, values: Mapping[Any, float]) -> Metric:
        family = families[name]
        cls = CounterMetricFamily if family.type is MetricType.COUNTER else GaugeMetricFamily
        result = cls(family.name, family.documentation, labels=family.labelnames)
        for labels, value in sorted(values.items()):
            result.add_metric(labels, value)
        return result

    live: dict[tuple[str, ...], float] = defaultdict(float)
    age: dict[tuple[str, ...], float] = defaultdict(float)
    for source_state in state.live_sources(now):
        key = (source_state.source.model_name, source_state.source.kind.value)
        live[key] += 1
        age[key] = max(age[key], now - source_state.last_seen)
    drops = state.reporter_drops()
    yield metric("tpmetrics_snapshots_accepted", state.snapshots_accepted)
    yield metric("tpmetrics_snapshots_rejected", state.snapshots_rejected)
    yield metric("tpmetrics_samples_rejected", state.samples_rejected)
    yield metric("tpmetrics_live_sources", live)
    yield metric("tpmetrics_last_flush_age_seconds", age)
    yield metric(
        "tpmetrics_reporter_dropped_snapshots",
        {key[:2]: value for key, value in drops.items() if key[2] == "snapshots"},
    )
    yield metric(
        "tpmetrics_reporter_dropped_observations",
        {key[:2]: value for key, value in drops.items() if key[2] == "observations"},
    )


class NameFilter(Collector):
    """Keeps only the samples whose name is in `names`, like prometheus_client's `name[]`."""

    def __init__(self, collector: Collector, names: Collection[str]) -> None:
        self._collector = collector
        self._names = frozenset(names)

    def collect(self) -> Iterator[Metric]:
        for metric in self._collector.collect():
            samples = [sample for sample in metric.samples if sample.name in self._names]
            if samples:
                filtered = Metric(metric.name, metric.documentation, metric.type, metric.unit)
                filtered.samples = samples
                yield filtered


def make_registry(
    state: MergeState, clock: Callable[[], float] = time.monotonic
) -> CollectorRegistry:
    """Return a fresh registry holding only the merged collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MergedCollector(state, clock))
    return registry


def render(
    registry: CollectorRegistry, accept: str = "", names: Collection[str] | None = None
) -> tuple[bytes, str]:
    """Encode the registry in the format the `Accept` header requests; return body and type."""
    encoder, content_type = choose_encoder(accept)
    if isinstance(encoder, functools.partial) and "escaping" in encoder.keywords:
        # NOTE: prometheus_client's OpenMetrics "underscores" escaping (0.26) also
        # rewrites colons, which are valid in Prometheus metric names, so vLLM's
        # names would reach Prometheus as vllm_... Every family name here is a
        # valid legacy name, so allow-utf-8 output equals correct underscore escaping.
        encoder = functools.partial(
            encoder.func, *encoder.args, **{**encoder.keywords, "escaping": "allow-utf-8"}
        )
    source: Collector = registry if not names else NameFilter(registry, names)
    return encoder(source), content_type
