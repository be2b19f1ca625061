"""The client side of tpmetrics: cheap in-process recording, flushed as cumulative snapshots.

An engine, a frontend or a TP worker owns one `Reporter`. `record` takes one
step's stats at once and only updates pre-aggregated cumulative state under a
lock held for microseconds; a background `Flusher` turns what changed into a
`Snapshot` every flush interval and sends it, so the hot path never waits on
the network or the aggregator.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from bisect import bisect_left
from collections.abc import Iterable

from tpmetrics.aggregator.ratelimit import RateLimitedLog
from tpmetrics.catalog import Catalog
from tpmetrics.catalog.types import Family, MetricType, Scope
from tpmetrics.snapshot import HistogramValue, Sample, Snapshot, SourceId, SourceKind
from tpmetrics.workers.flusher import Flusher, Sink

logger = logging.getLogger(__name__)

# Module-level names: on CPython 3.11 an enum member lookup in the hot loop
# of `Reporter.record` costs several times a global name lookup.
_COUNTER = MetricType.COUNTER
_HISTOGRAM = MetricType.HISTOGRAM
_GAUGE = MetricType.GAUGE


class Series:
    """A handle on one series of a reporter, returned by `Reporter.series`.

    It also contains the series' cumulative state, so recording is one
    attribute access and no dictionary lookup.
    """

    __slots__ = ("bounds", "counts", "family", "index", "labels", "sum", "value")

    def __init__(
        self, index: int, family: Family, labels: tuple[str, ...], bounds: tuple[float, ...]
    ) -> None:
        self.index = index
        self.family = family
        self.labels = labels
        self.bounds = bounds
        self.counts = [0.0] * (len(bounds) + 1) if family.type is MetricType.HISTOGRAM else []
        self.sum = 0.0
        self.value = 0.0

    def sample(self) -> Sample:
        if self.family.type is MetricType.HISTOGRAM:
            value: float | HistogramValue = HistogramValue(
                self.bounds, tuple(self.counts), self.sum
            )
        else:
            value = self.value
        return Sample(self.family.name, self.labels, value)


Pair = tuple[Series, float]


class Reporter:
    """Records one source's stats and hands cumulative snapshots to a flusher.

    Example:
        >>> reporter = Reporter(SourceId(SourceKind.ENGINE, "llama", engine=0), Catalog())
        >>> tokens = reporter.series("vllm:iteration_tokens_total")
        >>> running = reporter.series("vllm:num_requests_running")
        >>> reporter.record(step=1, observations=[(tokens, 128)], gauges=[(running, 5)])
    """

    def __init__(
        self,
        source: SourceId,
        catalog: Catalog,
        sink: Sink | None = None,
        flush_interval_s: float = 1.0,
        *,
        incarnation: str | None = None,
        era: str = "",
    ) -> None:
        self.source = source
        self.catalog = catalog
        self.incarnation = incarnation or uuid.uuid4().hex
        self.era = era
        self._lock = threading.Lock()
        self._series: dict[tuple[str, tuple[str, ...]], Series] = {}
        self._all: list[Series] = []
        self._dirty: set[Series] = set()
        self._step = 0
        self._seq = 0
        self.dropped_snapshots = 0
        self.dropped_observations = 0
        self._log = RateLimitedLog(logger, interval_s=10.0)
        self._flusher: Flusher | None = None
        if sink is not None:
            self._flusher = Flusher(self, sink, flush_interval_s)
            self._flusher.start()

    def has(self, family: str) -> bool:
        """Tell whether the catalog exports `family` (hidden families are absent)."""
        return family in self.catalog

    def series(self, family: str, **labels: str) -> Series:
        """Return the handle of one series, creating it at zero.

        `model_name`, and `engine` and `rank` where the source has them, come
        from the source; every other label of the family must be given.
        """
        spec = self.catalog.family(family)
        values = self._source_labels(spec) | labels
        missing = [name for name in spec.labelnames if name not in values]
        extra = sorted(set(values) - set(spec.labelnames))
        if missing or extra:
            raise ValueError(
                f"invalid labels for {family}: missing {missing}, unexpected {extra}; "
                f"the family's labels are {list(spec.labelnames)}"
            )
        label_values = tuple(str(values[name]) for name in spec.labelnames)
        key = (family, label_values)
        with self._lock:
            handle = self._series.get(key)
            if handle is None:
                bounds = self.catalog.bounds(family) if spec.type is MetricType.HISTOGRAM else ()
                handle = Series(len(self._all), spec, label_values, bounds)
                self._series[key] = handle
                self._all.append(handle)
                self._dirty.add(handle)
        return handle

    def _source_labels(self, family: Family) -> dict[str, str]:
        labels = {"model_name": self.source.model_name}
        if self.source.kind is not SourceKind.FRONTEND and "engine" in family.labelnames:
            labels["engine"] = str(self.source.engine)
        if self.source.kind is SourceKind.RANK and family.scope is Scope.RANK:
            labels["rank"] = str(self.source.rank)
        return labels

    def record(
        self,
        step: int | None = None,
        counters: Iterable[Pair] = (),
        observations: Iterable[Pair] = (),
        gauges: Iterable[Pair] = (),
    ) -> None:
        """Record one step's stats: counter increments, histogram observations, gauge values.

        A negative increment or a non-finite observation or gauge value is
        dropped, counted in `dropped_observations` and logged; the rest of the
        step is recorded.
        """
        isfinite = math.isfinite
        dropped: list[tuple[Series, float]] = []
        with self._lock:
            if step is not None:
                self._step = step
            dirty = self._dirty
            for handle, amount in counters:
                if handle.family.type is not _COUNTER:
                    raise TypeError(f"{handle.family.name} is not a counter")
                if not amount >= 0 or not isfinite(amount):
                    dropped.append((handle, amount))
                    continue
                handle.value += amount
                dirty.add(handle)
            for handle, value in observations:
                if handle.family.type is not _HISTOGRAM:
                    raise TypeError(f"{handle.family.name} is not a histogram")
                if not isfinite(value):
                    dropped.append((handle, value))
                    continue
                handle.counts[bisect_left(handle.bounds, value)] += 1
                handle.sum += value
                dirty.add(handle)
            for handle, value in gauges:
                if handle.family.type is not _GAUGE:
                    raise TypeError(f"{handle.family.name} is not a gauge")
                if not isfinite(value):
                    dropped.append((handle, value))
                    continue
                handle.value = value
                dirty.add(handle)
            self.dropped_observations += len(dropped)
        for handle, value in dropped:
            self._log.warning(
                (handle.family.name, "invalid"),
                "%s: dropped invalid value %r for %s: expected a finite number "
                "(and no negative counter increment)",
                self.source,
                value,
                handle.family.name,
            )

    def snapshot(self, full: bool = False, final: bool = False) -> Snapshot:
        """Take what changed since the last snapshot (everything when `full`)."""
        with self._lock:
            changed = self._all if full else list(self._dirty)
            samples = tuple(handle.sample() for handle in changed)
            self._dirty = set()
            self._seq += 1
            return Snapshot(
                source=self.source,
                incarnation=self.incarnation,
                seq=self._seq,
                step=self._step,
                samples=samples,
                full=full,
                final=final,
                dropped_snapshots=self.dropped_snapshots,
                dropped_observations=self.dropped_observations,
                era=self.era,
            )

    def mark_unsent(self, snapshot: Snapshot) -> None:
        """Count a snapshot that could not be delivered and send its series again next time."""
        with self._lock:
            self.dropped_snapshots += 1
            for sample in snapshot.samples:
                self._dirty.add(self._series[(sample.family, sample.labels)])

    @property
    def flush_cpu_s(self) -> float:
        """CPU seconds the flusher thread has spent building and sending snapshots."""
        return 0.0 if self._flusher is None else self._flusher.cpu_s

    def flush(self) -> bool:
        """Send what changed now, from the calling thread; return whether it was delivered."""
        if self._flusher is None:
            raise RuntimeError(f"{self.source}: this reporter has no sink to flush to")
        return self._flusher.flush_now()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the flusher and send a final snapshot; the aggregator retires this incarnation."""
        if self._flusher is not None:
            self._flusher.close(timeout_s)
            self._flusher = None


def connect_reporter(
    source: SourceId,
    flush_interval_s: float = 1.0,
    aggregator: str | None = None,
    namespace: str | None = None,
    timeout_s: float = 30.0,
    *,
    era: str = "",
) -> Reporter:
    """Return a reporter for `source` that flushes to the aggregator actor over Ray.

    The catalog (bucket bounds, hidden families) comes from the aggregator, so
    every source of a model records with the same bounds. Waits up to
    `timeout_s` seconds for the aggregator to appear; the defaults name the
    actor that `tpmetrics serve` starts. Give every source of one engine
    start the same `era` (any unique string) so that its engine-scope
    values are counted once even across restarts.
    """
    # Imported here so that recording, and the tests of it, never need Ray.
    from tpmetrics.aggregator.actor import AGGREGATOR_NAME, NAMESPACE  # noqa: PLC0415
    from tpmetrics.workers.ray_sink import connect  # noqa: PLC0415

    return connect(
        source,
        flush_interval_s,
        aggregator or AGGREGATOR_NAME,
        namespace or NAMESPACE,
        timeout_s,
        era=era,
    )
