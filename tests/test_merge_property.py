"""Property: whatever the restarts, resends and send failures, the merge equals the raw truth."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.merge_support import MODEL, frontend, rank, scrape, value
from tpmetrics.aggregator.state import MergeState
from tpmetrics.catalog import Catalog
from tpmetrics.snapshot import Snapshot, SourceId
from tpmetrics.workers.reporter import Reporter

HISTOGRAM = "vllm:request_params_n"
COUNTER = "vllm:generation_tokens"
ENGINE0 = {"model_name": MODEL, "engine": "0"}
NUM_FRONTENDS = 2

values = st.lists(st.sampled_from([0.5, 1, 2, 3, 7, 10, 15, 40]), max_size=4)
frontend_index = st.integers(0, NUM_FRONTENDS - 1)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("frontend_observe"), frontend_index, values),
        st.tuples(st.just("engine_step"), st.just(0), values),
        st.tuples(st.just("flush"), st.integers(0, 7), st.just([])),
        st.tuples(st.just("resend"), st.integers(0, 7), st.just([])),
        st.tuples(st.just("send_fails"), st.integers(0, 7), st.just([])),
        st.tuples(st.just("restart_frontend"), frontend_index, st.just([])),
        st.tuples(st.just("close_frontend"), frontend_index, st.just([])),
        st.tuples(st.just("restart_engine"), st.integers(0, 7), st.just([])),
    ),
    max_size=40,
)


@dataclass
class World:
    """Reporters of two frontends and one engine's TP ranks, feeding one merge state."""

    tp: int
    catalog: Catalog = field(default_factory=Catalog)
    state: MergeState = field(default_factory=MergeState)
    reporters: dict[SourceId, Reporter] = field(default_factory=dict)
    last_sent: dict[SourceId, Snapshot] = field(default_factory=dict)
    step: int = 0
    life: int = 0
    life_steps: list[list[float]] = field(default_factory=list)
    flushed_step: dict[int, int] = field(default_factory=dict)
    truth_counts: list[float] = field(default_factory=lambda: [0.0] * 6)
    truth_sum: float = 0.0
    truth_tokens: float = 0.0
    now: float = 0.0

    def __post_init__(self) -> None:
        for i in range(NUM_FRONTENDS):
            self.reporters[frontend(i)] = Reporter(frontend(i), self.catalog)
        self.start_engine()

    def start_engine(self) -> None:
        """Start every rank of a new engine life, with an era id all ranks share."""
        self.life += 1
        self.step = 0
        self.life_steps = []
        self.flushed_step = {}
        for r in range(self.tp):
            self.reporters[rank(0, r)] = Reporter(rank(0, r), self.catalog, era=f"life-{self.life}")

    def end_engine(self, flushing: list[int]) -> None:
        """Flush the given ranks, then count what the engine's most advanced flush covered."""
        for r in flushing:
            self.flush(rank(0, r))
        counted = max(self.flushed_step.values(), default=0)
        for observations in self.life_steps[:counted]:
            self.record_truth(observations)

    def sources(self) -> list[SourceId]:
        return list(self.reporters)

    def observe(self, reporter: Reporter, step: int | None, observations: list[float]) -> None:
        labels = {"engine": "0"} if reporter.source.engine is None else {}
        histogram = reporter.series(HISTOGRAM, **labels)
        tokens = reporter.series(COUNTER, **labels)
        reporter.record(
            step=step,
            observations=[(histogram, v) for v in observations],
            counters=[(tokens, len(observations))],
        )

    def record_truth(self, observations: list[float]) -> None:
        bounds = self.catalog.bounds(HISTOGRAM)
        for v in observations:
            self.truth_counts[bisect_left(bounds, v)] += 1
            self.truth_sum += v
        self.truth_tokens += len(observations)

    def flush(self, source: SourceId, final: bool = False) -> None:
        self.now += 0.1
        snapshot = self.reporters[source].snapshot(final=final)
        self.state.apply(snapshot, self.now)
        self.last_sent[source] = snapshot
        if source.rank is not None:
            self.flushed_step[source.rank] = self.step

    def run(self, name: str, index: int, observations: list[float]) -> None:
        sources = self.sources()
        if name == "frontend_observe":
            self.observe(self.reporters[frontend(index)], None, observations)
            self.record_truth(observations)
        elif name == "engine_step":
            self.step += 1
            for r in range(self.tp):
                self.observe(self.reporters[rank(0, r)], self.step, observations)
            self.life_steps.append(observations)
        elif name == "flush":
            self.flush(sources[index % len(sources)])
        elif name == "resend":
            source = sources[index % len(sources)]
            if source in self.last_sent:
                self.state.apply(self.last_sent[source], self.now)
        elif name == "send_fails":
            reporter = self.reporters[sources[index % len(sources)]]
            reporter.mark_unsent(reporter.snapshot())
        elif name in ("restart_frontend", "close_frontend"):
            source = frontend(index)
            self.flush(source, final=name == "close_frontend")
            self.reporters[source] = Reporter(source, self.catalog)
        elif name == "restart_engine":
            # `index` picks which ranks flush before the engine stops (a bit
            # per rank): the others lose what they recorded since their last
            # flush, as a crashed worker does.
            self.end_engine([r for r in range(self.tp) if index >> r & 1])
            self.start_engine()


@settings(max_examples=300, deadline=None)
@given(tp=st.integers(1, 3), ops=operations)
def test_merge_equals_raw_observations(tp: int, ops: list[tuple[str, int, list[float]]]) -> None:
    world = World(tp)
    for name, index, observations in ops:
        world.run(name, index, observations)
    for source in world.sources():
        if source.rank is None:
            world.flush(source)
    world.end_engine(list(range(tp)))
    samples = scrape(world.state, world.now)

    cumulative = 0.0
    bounds = [*world.catalog.bounds(HISTOGRAM), float("inf")]
    for bound, count in zip(bounds, world.truth_counts, strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else f"{bound}"
        got = value(samples, f"{HISTOGRAM}_bucket", **ENGINE0, le=le)
        assert (got or 0.0) == cumulative, f"bucket le={le}"
    assert (value(samples, f"{HISTOGRAM}_sum", **ENGINE0) or 0.0) == world.truth_sum
    assert (value(samples, f"{COUNTER}_total", **ENGINE0) or 0.0) == world.truth_tokens
