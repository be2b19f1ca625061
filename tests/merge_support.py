"""Builds snapshots with real reporters and reads merged values back through the exposition."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tpmetrics.aggregator.exposition import make_registry, render
from tpmetrics.aggregator.state import MergeState
from tpmetrics.snapshot import SourceId, SourceKind

MODEL = "llama"


def rank(engine: int, rank_index: int, model: str = MODEL) -> SourceId:
    return SourceId(SourceKind.RANK, model, engine=engine, rank=rank_index)


def engine(index: int, model: str = MODEL) -> SourceId:
    return SourceId(SourceKind.ENGINE, model, engine=index)


def frontend(instance: int, model: str = MODEL) -> SourceId:
    return SourceId(SourceKind.FRONTEND, model, instance=instance)


def scrape_text(state: MergeState, now: float) -> str:
    body, _ = render(make_registry(state, clock=lambda: now))
    return body.decode()


def scrape(state: MergeState, now: float) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample as {(sample name, sorted labels): value}, parsed by prometheus_client."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(scrape_text(state, now)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    """Return the sample `name` with exactly `labels`, or None if it is absent."""
    return samples.get((name, tuple(sorted(labels.items()))))
