"""The aggregator's merge state: pure data, no Ray, no I/O but logging.

`MergeState.apply` takes one snapshot; `cumulative_series` and
`gauge_series` hold the merged view that the exposition renders. Time is passed in (`now`, seconds
on a monotonic clock) so tests control it.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from tpmetrics.aggregator import validation
from tpmetrics.aggregator.errors import RejectedReportError, RejectReason
from tpmetrics.aggregator.ratelimit import RateLimitedLog
from tpmetrics.aggregator.series import CumulativeSeries, GaugeContribution, GaugeSeries
from tpmetrics.catalog import Catalog, CatalogConfig
from tpmetrics.catalog.types import MetricType
from tpmetrics.snapshot import ReportReply, Sample, Snapshot, SourceId

logger = logging.getLogger(__name__)

SeriesKey = tuple[str, tuple[str, ...]]

RETIRED_INCARNATIONS_KEPT = 16
"""Ended incarnation ids remembered per source, to reject their late snapshots."""


@dataclass(slots=True)
class SourceState:
    """The aggregator's record of the live incarnation of one source."""

    source: SourceId
    incarnation: str
    seq: int
    step: int
    last_seen: float
    era: str = ""
    cumulative: set[SeriesKey] = field(default_factory=set)
    gauges: set[SeriesKey] = field(default_factory=set)
    dropped_snapshots: int = 0
    dropped_observations: int = 0


class MergeState:
    """Merged series of every source, built from cumulative snapshots.

    Example:
        >>> state = MergeState()
        >>> reply = state.apply(snapshot, now=0.0)
        >>> text, content_type = render(make_registry(state))
    """

    def __init__(
        self,
        default_config: CatalogConfig | None = None,
        gauge_ttl_s: float = 3.0,
    ) -> None:
        if not gauge_ttl_s > 0:
            raise ValueError(f"invalid gauge time-to-live {gauge_ttl_s!r}: expected seconds > 0")
        self.aggregator_id = uuid.uuid4().hex
        self.gauge_ttl_s = gauge_ttl_s
        self._default_config = default_config or CatalogConfig()
        self._default_catalog = Catalog(self._default_config)
        self._catalogs: dict[str, Catalog] = {}
        self._cumulative: dict[SeriesKey, CumulativeSeries] = {}
        self._gauges: dict[SeriesKey, GaugeSeries] = {}
        self._sources: dict[SourceId, SourceState] = {}
        self._retired_incarnations: dict[SourceId, deque[str]] = {}
        self._retired_drops: Counter[tuple[str, str, str]] = Counter()
        self.snapshots_accepted: Counter[tuple[str, str]] = Counter()
        self.snapshots_rejected: Counter[tuple[str, str]] = Counter()
        self.samples_rejected: Counter[tuple[str, str]] = Counter()
        self._log = RateLimitedLog(logger, interval_s=10.0)

    # Catalogs ------------------------------------------------------------

    def configure_model(self, model_name: str, config: CatalogConfig) -> None:
        """Set the catalog (bucket bounds, hidden families) for one model's series."""
        self._catalogs[model_name] = Catalog(config)

    def catalog_config(self, model_name: str) -> CatalogConfig:
        catalog = self._catalogs.get(model_name)
        return self._default_config if catalog is None else catalog.config

    def catalog(self, model_name: str) -> Catalog:
        return self._catalogs.get(model_name, self._default_catalog)

    # Snapshots -----------------------------------------------------------

    def apply(self, snapshot: Snapshot, now: float) -> ReportReply:
        """Merge one snapshot; reject what is invalid and keep everything else."""
        source = snapshot.source
        model = source.model_name
        try:
            state = self._source_state(snapshot, now)
        except RejectedReportError as error:
            self.snapshots_rejected[(model, error.reason.value)] += 1
            self._log.warning((source, error.reason), "%s: snapshot rejected: %s", source, error)
            return ReportReply(self.aggregator_id, accepted=0, rejected=(error.message,))

        needs_full = state.seq == 0 and not snapshot.full and snapshot.seq > 1
        state.seq = snapshot.seq
        state.step = max(state.step, snapshot.step)
        state.last_seen = now
        state.dropped_snapshots = snapshot.dropped_snapshots
        state.dropped_observations = snapshot.dropped_observations
        state.era = snapshot.era

        catalog = self.catalog(model)
        rejected: list[str] = []
        accepted = 0
        for sample in snapshot.samples:
            rejection = self._try_sample(catalog, state, sample, snapshot.step, now)
            if rejection is None:
                accepted += 1
                continue
            self.samples_rejected[(model, rejection.reason.value)] += 1
            self._log.warning(
                (source, rejection.reason), "%s: sample rejected: %s", source, rejection
            )
            rejected.append(rejection.message)
        self.snapshots_accepted[(model, source.kind.value)] += 1
        if snapshot.final:
            logger.info("%s: incarnation %s closed", source, snapshot.incarnation)
            self._end_incarnation(state)
        return ReportReply(self.aggregator_id, accepted, tuple(rejected), needs_full)

    def _source_state(self, snapshot: Snapshot, now: float) -> SourceState:
        source = snapshot.source
        if snapshot.incarnation in self._retired_incarnations.get(source, ()):
            raise RejectedReportError(
                RejectReason.RETIRED_INCARNATION,
                f"incarnation {snapshot.incarnation} has ended; "
                "a restarted reporter must use a new incarnation id",
            )
        state = self._sources.get(source)
        if state is not None and state.incarnation == snapshot.incarnation:
            if snapshot.seq < state.seq:
                raise RejectedReportError(
                    RejectReason.STALE,
                    f"snapshot seq {snapshot.seq} is older than the applied seq {state.seq}",
                )
            return state
        if state is not None:
            logger.info(
                "%s: restarted, incarnation %s replaces %s",
                source,
                snapshot.incarnation,
                state.incarnation,
            )
            self._end_incarnation(state)
        else:
            logger.info("%s: first snapshot of incarnation %s", source, snapshot.incarnation)
        state = SourceState(source, snapshot.incarnation, seq=0, step=0, last_seen=now)
        self._sources[source] = state
        return state

    def _try_sample(
        self, catalog: Catalog, state: SourceState, sample: Sample, step: int, now: float
    ) -> RejectedReportError | None:
        """Apply one sample; return the error that rejected it, if any."""
        try:
            self._apply_sample(catalog, state, sample, step, now)
        except RejectedReportError as error:
            return error
        except (TypeError, ValueError, AttributeError) as error:
            # A value of a shape the checks do not name (a None count, a string
            # bound): reject this sample alone, like any other invalid one.
            family = getattr(sample, "family", "?")
            return RejectedReportError(
                RejectReason.MALFORMED,
                f"invalid sample of {family}: {type(error).__name__}: {error}",
            )
        return None

    def _apply_sample(
        self, catalog: Catalog, state: SourceState, sample: Sample, step: int, now: float
    ) -> None:
        if not isinstance(sample, Sample) or not isinstance(sample.labels, tuple):
            raise RejectedReportError(
                RejectReason.MALFORMED, f"invalid sample: expected Sample, got {sample!r}"
            )
        family = validation.lookup_family(catalog, sample)
        validation.check_labels(family, sample.labels, state.source)
        key = (family.name, sample.labels)

        if family.type is MetricType.GAUGE:
            value = validation.gauge_value(family, sample.value)
            series = self._gauges.get(key)
            if series is None:
                series = self._gauges[key] = GaugeSeries(family, sample.labels)
            series.values[state.source] = GaugeContribution(value, step, now)
            state.gauges.add(key)
            return

        bounds: tuple[float, ...] = ()
        if family.type is MetricType.COUNTER:
            vector = validation.counter_vector(family, sample.value)
        else:
            bounds = catalog.bounds(family.name)
            vector = validation.histogram_vector(family, sample.value, bounds)

        cumulative = self._cumulative.get(key)
        if cumulative is not None and cumulative.bounds != bounds:
            logger.warning(
                "%s: bucket bounds of %s changed from %s to %s; its series starts over",
                state.source,
                family.name,
                list(cumulative.bounds),
                list(bounds),
            )
            cumulative = None
        if cumulative is None:
            cumulative = CumulativeSeries(family, sample.labels, len(vector), bounds)
            self._cumulative[key] = cumulative

        previous = cumulative.previous(state.source)
        if previous is not None:
            validation.check_not_decreasing(family, previous.vector, vector)
        cumulative.update(state.source, vector, step, state.era)
        state.cumulative.add(key)

    def _end_incarnation(self, state: SourceState) -> None:
        """Retire an incarnation's counts and drop its gauges."""
        source = state.source
        for key in state.cumulative:
            self._cumulative[key].retire(source)
        for key in state.gauges:
            gauge = self._gauges[key]
            gauge.values.pop(source, None)
            if not gauge.values:
                del self._gauges[key]
        drops = (source.model_name, source.kind.value)
        self._retired_drops[(*drops, "snapshots")] += state.dropped_snapshots
        self._retired_drops[(*drops, "observations")] += state.dropped_observations
        retired = self._retired_incarnations.setdefault(
            source, deque(maxlen=RETIRED_INCARNATIONS_KEPT)
        )
        retired.append(state.incarnation)
        if self._sources.get(source) is state:
            del self._sources[source]

    # Merged view ---------------------------------------------------------

    def live_sources(self, now: float) -> list[SourceState]:
        """Sources heard from within the gauge time-to-live."""
        return [s for s in self._sources.values() if now - s.last_seen <= self.gauge_ttl_s]

    def reporter_drops(self) -> Counter[tuple[str, str, str]]:
        """Dropped snapshots and observations per (model_name, kind, what), ended ones included."""
        drops = Counter(self._retired_drops)
        for state in self._sources.values():
            key = (state.source.model_name, state.source.kind.value)
            drops[(*key, "snapshots")] += state.dropped_snapshots
            drops[(*key, "observations")] += state.dropped_observations
        return drops

    def cumulative_series(self) -> Iterator[CumulativeSeries]:
        return iter(self._cumulative.values())

    def gauge_series(self) -> Iterator[GaugeSeries]:
        return iter(self._gauges.values())
