"""Values that cross the wire from a reporter to the aggregator.

Snapshots carry cumulative values, never deltas, so a lost or repeated
snapshot changes nothing: the aggregator keeps the latest one per source
incarnation.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class SourceKind(enum.Enum):
    FRONTEND = "frontend"
    ENGINE = "engine"
    RANK = "rank"


@dataclass(frozen=True, slots=True)
class SourceId:
    """One reporting process.

    `engine` is the DP rank of the engine a scheduler or TP worker belongs
    to; `rank` is the TP rank of a worker. A frontend has neither, and `instance`
    distinguishes it from other API servers of the same model.
    """

    kind: SourceKind
    model_name: str
    engine: int | None = None
    rank: int | None = None
    instance: int = 0

    def __post_init__(self) -> None:
        needs_engine = self.kind is not SourceKind.FRONTEND
        if needs_engine != (self.engine is not None):
            raise ValueError(
                f"source {self.kind.value}: engine is required for engine and rank "
                f"sources and not allowed for a frontend, got {self.engine!r}"
            )
        if (self.kind is SourceKind.RANK) != (self.rank is not None):
            raise ValueError(
                f"source {self.kind.value}: rank is required for rank sources "
                f"and not allowed otherwise, got {self.rank!r}"
            )

    def __str__(self) -> str:
        if self.kind is SourceKind.FRONTEND:
            return f"model {self.model_name!r} frontend {self.instance}"
        if self.kind is SourceKind.ENGINE:
            return f"model {self.model_name!r} engine {self.engine}"
        return f"model {self.model_name!r} engine {self.engine} rank {self.rank}"


@dataclass(frozen=True, slots=True)
class HistogramValue:
    """Cumulative state of one histogram series.

    `counts` contains one count per bucket, not cumulative: `counts[i]` counts
    observations in `(bounds[i-1], bounds[i]]`, and the last entry counts
    those above `bounds[-1]` (the `+Inf` bucket). So
    `len(counts) == len(bounds) + 1`.
    """

    bounds: tuple[float, ...]
    counts: tuple[float, ...]
    sum: float


SeriesValue = float | HistogramValue


@dataclass(frozen=True, slots=True)
class Sample:
    """The cumulative value of one series: a family and its label values in order."""

    family: str
    labels: tuple[str, ...]
    value: SeriesValue


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one source incarnation sends at each flush.

    `seq` increases by one per snapshot of an incarnation. `step` is the last
    engine step the source recorded (0 for a frontend). `full` is set when
    `samples` contains every series the incarnation has touched, not only the
    changed ones; `final` marks the last snapshot of a graceful close.
    `dropped_snapshots` and `dropped_observations` count what the reporter
    had to drop so far in this incarnation. `era` names the engine life
    whose steps the engine-scope values count: the scheduler and the TP
    workers of one engine start share it, and a restarted engine gets a new
    one. Empty when the reporter does not know it.
    """

    source: SourceId
    incarnation: str
    seq: int
    step: int
    samples: tuple[Sample, ...]
    full: bool = False
    final: bool = False
    dropped_snapshots: int = 0
    dropped_observations: int = 0
    era: str = ""


@dataclass(frozen=True, slots=True)
class ReportReply:
    """The aggregator's reply to one snapshot.

    `aggregator_id` changes when the aggregator restarts; a reporter that
    sees a new one resends its full state, and so does one that gets
    `needs_full_state` (the aggregator had no state for its incarnation).
    `rejected` holds one message per rejected sample or snapshot.
    """

    aggregator_id: str
    accepted: int
    rejected: tuple[str, ...] = ()
    needs_full_state: bool = False
