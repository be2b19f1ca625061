"""The named Ray actor around `MergeState`, and how to start or find it."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import ray

from tpmetrics.aggregator.exposition import make_registry, render
from tpmetrics.aggregator.state import MergeState
from tpmetrics.catalog import CatalogConfig
from tpmetrics.snapshot import ReportReply, Snapshot

logger = logging.getLogger(__name__)

AGGREGATOR_NAME = "tpmetrics-aggregator"
NAMESPACE = "tpmetrics"


class Aggregator:
    """Merges every source's snapshots and renders `/metrics`.

    Ray runs one call at a time on this actor, so the state needs no lock.
    When Ray restarts the actor after a crash, it starts empty with a new
    `aggregator_id`, and every reporter resends its full state.
    """

    def __init__(
        self,
        default_config: CatalogConfig | None = None,
        model_configs: Mapping[str, CatalogConfig] | None = None,
        gauge_ttl_s: float = 3.0,
    ) -> None:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        self._state = MergeState(default_config, gauge_ttl_s=gauge_ttl_s)
        for model_name, config in (model_configs or {}).items():
            self._state.configure_model(model_name, config)
        self._registry = make_registry(self._state)
        logger.info("aggregator %s started", self._state.aggregator_id)

    def report(self, snapshot: Snapshot) -> ReportReply:
        return self._state.apply(snapshot, now=time.monotonic())

    def catalog_config(self, model_name: str) -> CatalogConfig:
        return self._state.catalog_config(model_name)

    def configure_model(self, model_name: str, config: CatalogConfig) -> None:
        self._state.configure_model(model_name, config)

    def scrape(self, accept: str = "", names: list[str] | None = None) -> tuple[bytes, str]:
        """Return the exposition body and its content type for an `Accept` header."""
        return render(self._registry, accept, names)

    def aggregator_id(self) -> str:
        return self._state.aggregator_id


AggregatorActor: Any = ray.remote(Aggregator)


def start_aggregator(
    default_config: CatalogConfig | None = None,
    model_configs: Mapping[str, CatalogConfig] | None = None,
    gauge_ttl_s: float = 3.0,
    name: str = AGGREGATOR_NAME,
    namespace: str = NAMESPACE,
) -> Any:
    """Start the named aggregator actor, or return the running one of that name."""
    handle = AggregatorActor.options(
        name=name,
        namespace=namespace,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
        max_restarts=-1,
        max_concurrency=1,
    ).remote(default_config, model_configs, gauge_ttl_s)
    ray.get(handle.aggregator_id.remote())
    return handle


def find_aggregator(
    name: str = AGGREGATOR_NAME, namespace: str = NAMESPACE, timeout_s: float = 30.0
) -> Any:
    """Return the running aggregator actor, waiting up to `timeout_s` seconds for it to appear."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get_actor(name, namespace=namespace)
        except ValueError:
            if time.monotonic() > deadline:
                raise LookupError(
                    f"aggregator actor {name!r} not found in Ray namespace {namespace!r} "
                    f"after {timeout_s} s: start it with `tpmetrics serve` or start_aggregator()"
                ) from None
            time.sleep(0.2)
