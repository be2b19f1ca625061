"""Checks a sample against the catalog and the source that sent it.

Every check raises `RejectedReportError` with the reason it is counted by and
a message that names the family, the bad value and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tpmetrics.aggregator.errors import RejectedReportError, RejectReason
from tpmetrics.catalog import Catalog, UnknownFamilyError
from tpmetrics.catalog.types import Family, MetricType
from tpmetrics.snapshot import HistogramValue, Sample, SourceId, SourceKind

Vector = tuple[float, ...]
"""Cumulative state of a counter `(value,)` or a histogram `(*bucket_counts, sum)`."""


def lookup_family(catalog: Catalog, sample: Sample) -> Family:
    """Return the catalog family of `sample`, or reject it."""
    try:
        family = catalog.family(sample.family)
    except UnknownFamilyError as error:
        raise RejectedReportError(RejectReason.UNKNOWN_FAMILY, str(error.args[0])) from None
    if family.derived:
        raise RejectedReportError(
            RejectReason.DERIVED_FAMILY,
            f"family {family.name} is computed by the aggregator and cannot be reported",
        )
    return family


def check_labels(family: Family, labels: Sequence[str], source: SourceId) -> None:
    """Reject label values that do not fit the family or contradict the source."""
    if len(labels) != len(family.labelnames) or not all(isinstance(v, str) for v in labels):
        raise RejectedReportError(
            RejectReason.WRONG_LABELS,
            f"invalid labels for {family.name}: expected {len(family.labelnames)} strings "
            f"for {list(family.labelnames)}, got {list(labels)!r}",
        )
    expected = {"model_name": source.model_name}
    if source.kind is not SourceKind.FRONTEND:
        expected["engine"] = str(source.engine)
    if source.kind is SourceKind.RANK:
        expected["rank"] = str(source.rank)
    for name, value in zip(family.labelnames, labels, strict=True):
        if name in expected and value != expected[name]:
            raise RejectedReportError(
                RejectReason.WRONG_LABELS,
                f"invalid label {name}={value!r} for {family.name} from {source}: "
                f"the source is {name}={expected[name]!r}",
            )


def counter_vector(family: Family, value: object) -> Vector:
    """Return a counter sample's value as a vector, or reject it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RejectedReportError(
            RejectReason.WRONG_TYPE,
            f"invalid value for counter {family.name}: expected a number, "
            f"got {type(value).__name__}",
        )
    check_finite(family, float(value))
    if value < 0:
        raise RejectedReportError(
            RejectReason.NEGATIVE,
            f"invalid value for counter {family.name}: counts cannot be negative, got {value}",
        )
    return (float(value),)


def histogram_vector(family: Family, value: object, bounds: Vector) -> Vector:
    """Return a histogram sample's buckets and sum as a vector, or reject it."""
    if not isinstance(value, HistogramValue):
        raise RejectedReportError(
            RejectReason.WRONG_TYPE,
            f"invalid value for histogram {family.name}: expected HistogramValue, "
            f"got {type(value).__name__}",
        )
    if tuple(value.bounds) != bounds:
        raise RejectedReportError(
            RejectReason.BUCKET_BOUNDS,
            f"invalid bucket bounds for {family.name}: expected {list(bounds)}, "
            f"got {list(value.bounds)}",
        )
    if len(value.counts) != len(bounds) + 1:
        raise RejectedReportError(
            RejectReason.MALFORMED,
            f"invalid bucket counts for {family.name}: expected {len(bounds) + 1} counts "
            f"(one per bound plus +Inf), got {len(value.counts)}",
        )
    for count in (*value.counts, value.sum):
        check_finite(family, count)
    if any(count < 0 for count in value.counts):
        raise RejectedReportError(
            RejectReason.NEGATIVE,
            f"invalid bucket counts for {family.name}: counts cannot be negative, "
            f"got {list(value.counts)}",
        )
    return (*(float(c) for c in value.counts), float(value.sum))


def gauge_value(family: Family, value: object) -> float:
    """Return a gauge sample's value, or reject it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RejectedReportError(
            RejectReason.WRONG_TYPE,
            f"invalid value for gauge {family.name}: expected a number, got {type(value).__name__}",
        )
    check_finite(family, float(value))
    return float(value)


def check_finite(family: Family, value: float) -> None:
    if not math.isfinite(value):
        raise RejectedReportError(
            RejectReason.NOT_FINITE,
            f"invalid value for {family.name}: expected a finite number, got {value}",
        )


def check_not_decreasing(family: Family, previous: Vector, current: Vector) -> None:
    """Reject a cumulative vector whose counts went down within one incarnation.

    A histogram's sum is exempt: observations may be negative.
    """
    counts = len(current) if family.type is MetricType.COUNTER else len(current) - 1
    for before, after in zip(previous[:counts], current[:counts], strict=True):
        if after < before:
            raise RejectedReportError(
                RejectReason.DECREASING,
                f"invalid value for {family.name}: counts decreased within one incarnation "
                f"from {list(previous[:counts])} to {list(current[:counts])}; "
                "a restarted source must report with a new incarnation id",
            )
