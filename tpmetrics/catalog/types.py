"""The types a family is declared with: metric type, scope and gauge reducer."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MetricType(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Scope(enum.Enum):
    """How many logical values of a series one engine has.

    ENGINE: one per engine; when several ranks of an engine report it, they
    report the same value and it is counted once. RANK: one per TP rank, kept
    apart by the `rank` label.
    """

    ENGINE = "engine"
    RANK = "rank"


class Reducer(enum.Enum):
    """The rule that turns a gauge series reported by several sources into one value."""

    SUM = "sum"
    MAX = "max"
    MIN = "min"
    MEAN = "mean"
    LATEST = "latest"


@dataclass(frozen=True, slots=True)
class Family:
    """One metric name with everything needed to validate, merge and export it.

    `name` is the declared name: counters are declared without `_total` and
    exported with it, as prometheus_client does. `labelnames` lists every
    label in exposition order, `model_name` first. `bucket_family` names the
    bucket set a histogram takes its bounds from; `reducer` is set for gauges
    only. `deprecated_in` is the `X.Y` version that deprecated the family.
    A `derived` family is computed by the aggregator and never reported.
    """

    name: str
    type: MetricType
    documentation: str
    labelnames: tuple[str, ...]
    scope: Scope = Scope.ENGINE
    reducer: Reducer | None = None
    bucket_family: str | None = None
    deprecated_in: str | None = None
    derived: bool = False

    def __post_init__(self) -> None:
        if (self.type is MetricType.HISTOGRAM) != (self.bucket_family is not None):
            raise ValueError(
                f"family {self.name}: bucket_family is required for histograms "
                f"and not allowed for other types, got {self.bucket_family!r}"
            )
        if (self.type is MetricType.GAUGE) != (self.reducer is not None):
            raise ValueError(
                f"family {self.name}: reducer is required for gauges "
                f"and not allowed for other types, got {self.reducer!r}"
            )
        if self.scope is Scope.RANK and "rank" not in self.labelnames:
            raise ValueError(f"family {self.name}: a rank-scope family needs a rank label")
