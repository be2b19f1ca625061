"""Merged state of one series: the contributions of every source and the retired totals.

Counters and histograms are cumulative vectors (see `validation.Vector`).
Their merged value is the retired totals plus, for each era of each
contribution group, the value of the era's most advanced member. A group is
one source, except for engine-scope families, where every scheduler and TP
worker of one engine forms one group because they report the same engine
steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tpmetrics.aggregator.validation import Vector
from tpmetrics.catalog.types import Family, Reducer, Scope
from tpmetrics.snapshot import SourceId, SourceKind

RECENT_ERAS = 4
"""Empty eras with an id kept per group, for members of an ended engine life that report late."""

GroupKey = tuple[str, int]
"""("engine", DP rank) for the engine group, or ("source", id) for a lone source."""


def group_key(family: Family, source: SourceId) -> GroupKey | SourceId:
    """Return the contribution group of `source` for a series of `family`."""
    if family.scope is Scope.ENGINE and source.kind is not SourceKind.FRONTEND:
        assert source.engine is not None
        return ("engine", source.engine)
    return source


def add(left: Vector, right: Vector) -> Vector:
    return tuple(a + b for a, b in zip(left, right, strict=True))


def subtract(left: Vector, right: Vector) -> Vector:
    return tuple(a - b for a, b in zip(left, right, strict=True))


@dataclass(slots=True)
class Contribution:
    """The latest cumulative vector and step of one source incarnation."""

    vector: Vector
    step: int


@dataclass(slots=True)
class Era:
    """Members of a group that report one stream of engine steps.

    The sources of one engine life form one era. Reporters that know the
    engine life send its id (`Snapshot.era`), and `era_id` matches it. For
    reporters that do not, membership is inferred: a new incarnation of a
    source already in the newest era starts a new era (the engine started
    over), and the other sources' new incarnations join that one. `seen`
    remembers every source that was ever a member. `base` and `base_step`
    are what the era has already retired: members count only what lies
    beyond them.
    """

    width: int
    era_id: str = ""
    members: dict[SourceId, Contribution] = field(default_factory=dict)
    seen: set[SourceId] = field(default_factory=set)
    base: Vector = ()
    base_step: int = 0

    def __post_init__(self) -> None:
        if not self.base:
            self.base = (0.0,) * self.width

    def effective(self, member: Contribution) -> Vector:
        # NOTE: clipping at zero is exact for members that replay one stream of
        # non-negative observations, which is what engine-scope reports are.
        return tuple(max(0.0, a - b) for a, b in zip(member.vector, self.base, strict=True))

    def progress(self, member: Contribution) -> tuple[int, float]:
        """Order members by steps beyond the base, then by count."""
        effective = self.effective(member)
        count = effective[0] if len(effective) == 1 else sum(effective[:-1])
        return (member.step - self.base_step, count)

    def leader(self) -> Contribution:
        return max(self.members.values(), key=self.progress)

    def retire(self, source: SourceId) -> Vector:
        """Remove a member; return what the era must retire for it.

        A member that another live member has caught up with retires
        nothing: the other one carries the same counts. When the most
        advanced member ends, what it counted beyond the base is retired and
        the base moves up to it, so a lagging or late member that reports the
        same steps later adds nothing a second time.
        """
        ending = self.members.pop(source)
        ending_progress = self.progress(ending)
        if any(self.progress(m) >= ending_progress for m in self.members.values()):
            return (0.0,) * self.width
        retired = self.effective(ending)
        self.base = add(self.base, retired)
        self.base_step = max(self.base_step, ending.step)
        return retired


@dataclass(slots=True)
class CumulativeSeries:
    """A counter or histogram series."""

    family: Family
    labels: tuple[str, ...]
    width: int
    bounds: tuple[float, ...] = ()
    retired: Vector = ()
    groups: dict[object, list[Era]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.retired:
            self.retired = (0.0,) * self.width

    def _find(self, source: SourceId) -> tuple[list[Era], Era | None]:
        eras = self.groups.setdefault(group_key(self.family, source), [])
        for era in reversed(eras):
            if source in era.members:
                return eras, era
        return eras, None

    def previous(self, source: SourceId) -> Contribution | None:
        _, era = self._find(source)
        return None if era is None else era.members[source]

    def update(self, source: SourceId, vector: Vector, step: int, era_id: str = "") -> None:
        eras, era = self._find(source)
        if era is not None:
            current = era.members[source]
            current.vector = vector
            current.step = step
            return
        era = self._era_to_join(eras, source, era_id)
        era.members[source] = Contribution(vector, step)
        era.seen.add(source)

    def _era_to_join(self, eras: list[Era], source: SourceId, era_id: str) -> Era:
        if era_id:
            for era in eras:
                if era.era_id == era_id:
                    return era
        elif eras and not eras[-1].era_id and source not in eras[-1].seen:
            # NOTE: without an era id this guess is wrong when a rank's first
            # report of an engine life comes after another rank's restart.
            return eras[-1]
        eras.append(Era(self.width, era_id))
        return eras[-1]

    def retire(self, source: SourceId) -> None:
        """Move an ended incarnation's counts into the retired totals."""
        eras, era = self._find(source)
        if era is None:
            return
        self.retired = add(self.retired, era.retire(source))
        # An empty era stays while a member that has not reported yet may
        # still join it and must count from its base: the newest era, and
        # the last few eras known by id.
        recent = eras[-RECENT_ERAS:]
        eras[:] = [e for e in eras if e.members or e is eras[-1] or (e.era_id and e in recent)]

    def value(self) -> Vector:
        total = self.retired
        for eras in self.groups.values():
            for era in eras:
                if era.members:
                    total = add(total, era.effective(era.leader()))
        return total


@dataclass(slots=True)
class GaugeContribution:
    value: float
    step: int
    set_at: float


@dataclass(slots=True)
class GaugeSeries:
    """A gauge series: the last value each live source set, reduced by the family's reducer."""

    family: Family
    labels: tuple[str, ...]
    values: dict[SourceId, GaugeContribution] = field(default_factory=dict)

    def value(self, live: set[SourceId] | None = None) -> float | None:
        """Reduce the values of the sources in `live` (all when None); None if there are none."""
        members = [
            contribution
            for source, contribution in self.values.items()
            if live is None or source in live
        ]
        if not members:
            return None
        return reduce_gauge(self.family.reducer, members)


def reduce_gauge(reducer: Reducer | None, members: list[GaugeContribution]) -> float:
    if reducer is Reducer.SUM:
        return sum(m.value for m in members)
    if reducer is Reducer.MAX:
        return max(m.value for m in members)
    if reducer is Reducer.MIN:
        return min(m.value for m in members)
    if reducer is Reducer.MEAN:
        return sum(m.value for m in members) / len(members)
    latest = max(members, key=lambda m: (m.step, m.set_at))
    return latest.value
