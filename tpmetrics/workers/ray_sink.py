"""Sends snapshots to the aggregator actor over Ray, and builds reporters that do."""

from __future__ import annotations

from typing import Any

import ray

from tpmetrics.aggregator.actor import AGGREGATOR_NAME, NAMESPACE, find_aggregator
from tpmetrics.catalog import Catalog
from tpmetrics.snapshot import ReportReply, Snapshot, SourceId
from tpmetrics.workers.reporter import Reporter


class RaySink:
    """Calls `Aggregator.report` on the named actor and waits for the reply.

    Raises:
        ray.exceptions.GetTimeoutError: the aggregator took longer than `timeout_s`.
        ray.exceptions.RayActorError: the aggregator died.
        LookupError: no aggregator of that name is running.
    """

    def __init__(
        self, name: str = AGGREGATOR_NAME, namespace: str = NAMESPACE, timeout_s: float = 5.0
    ) -> None:
        self._name = name
        self._namespace = namespace
        self._timeout_s = timeout_s
        self._actor: Any = None

    def actor(self) -> Any:
        if self._actor is None:
            self._actor = find_aggregator(self._name, self._namespace, timeout_s=0.0)
        return self._actor

    def send(self, snapshot: Snapshot) -> ReportReply:
        reply: Any = ray.get(self.actor().report.remote(snapshot), timeout=self._timeout_s)
        if not isinstance(reply, ReportReply):
            raise TypeError(f"aggregator replied {type(reply).__name__}, expected ReportReply")
        return reply

    def reset(self) -> None:
        self._actor = None


def connect(
    source: SourceId,
    flush_interval_s: float = 1.0,
    aggregator: str = AGGREGATOR_NAME,
    namespace: str = NAMESPACE,
    timeout_s: float = 30.0,
    *,
    era: str = "",
) -> Reporter:
    """Build the reporter that `reporter.connect_reporter` returns."""
    actor = find_aggregator(aggregator, namespace, timeout_s)
    config: Any = ray.get(actor.catalog_config.remote(source.model_name), timeout=timeout_s)
    sink = RaySink(aggregator, namespace)
    return Reporter(source, Catalog(config), sink, flush_interval_s, era=era)
