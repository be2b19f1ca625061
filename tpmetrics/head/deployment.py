"""Starts and stops everything `tpmetrics serve` runs: aggregator, engines and the head app.

It expects Ray to be initialised already, so the CLI (embedded local Ray or
an existing cluster) and the tests (one Ray per test session) share it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from fastapi import FastAPI

from tpmetrics.aggregator.actor import start_aggregator
from tpmetrics.catalog import CatalogConfig
from tpmetrics.engine.core import EngineConfig, launch_engine
from tpmetrics.head.app import create_app
from tpmetrics.head.completions import CompletionService, ServedModel
from tpmetrics.head.router import EngineRouter, Routing
from tpmetrics.workers.model_config import resolve_model

logger = logging.getLogger(__name__)

ENGINE_START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ServeConfig:
    """Every setting of `tpmetrics serve`; the CLI flags map one to one onto these fields."""

    model: str = "tiny-llama"
    served_model_name: str | None = None
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    max_num_seqs: int = 64
    max_model_len: int = 8192
    max_num_batched_tokens: int = 2048
    num_kv_blocks: int = 4096
    block_size: int = 16
    enable_prefix_caching: bool = True
    routing: Routing = Routing.LEAST_LOADED
    flush_interval_s: float = 1.0
    gauge_ttl_s: float | None = None
    show_hidden_metrics_for_version: str | None = None
    custom_histogram_buckets: dict[str, tuple[float, ...]] = field(default_factory=dict)
    seed: int = 0
    report_metrics: bool = True

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "data_parallel_size", "max_num_seqs", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"invalid {name} {getattr(self, name)}: expected an integer >= 1")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"invalid max_num_batched_tokens {self.max_num_batched_tokens}: expected >= 1"
            )
        if not self.flush_interval_s > 0:
            raise ValueError(
                f"invalid flush interval {self.flush_interval_s}: expected seconds > 0"
            )
        if self.num_kv_blocks * self.block_size < self.max_model_len:
            raise ValueError(
                f"{self.num_kv_blocks} KV blocks of {self.block_size} tokens hold "
                f"{self.num_kv_blocks * self.block_size} tokens, fewer than max_model_len "
                f"{self.max_model_len}: raise --num-kv-blocks or lower --max-model-len"
            )

    @property
    def model_name(self) -> str:
        """The served model name that labels every series: the flag, else the model argument."""
        return self.served_model_name or self.model

    def catalog_config(self) -> CatalogConfig:
        return CatalogConfig(
            max_model_len=self.max_model_len,
            custom_buckets=self.custom_histogram_buckets,
            show_hidden_metrics_for_version=self.show_hidden_metrics_for_version,
        )

    def engine_config(self, engine: int) -> EngineConfig:
        return EngineConfig(
            model=self.model,
            model_name=self.model_name,
            engine=engine,
            tp_size=self.tensor_parallel_size,
            num_blocks=self.num_kv_blocks,
            block_size=self.block_size,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            enable_prefix_caching=self.enable_prefix_caching,
            seed=self.seed,
            report_metrics=self.report_metrics,
            flush_interval_s=self.flush_interval_s,
        )


class Deployment:
    """The aggregator actor, one EngineCore actor per DP rank, and the head app over them."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.aggregator: Any = None
        self.engines: list[Any] = []
        self.app: FastAPI | None = None

    def start(self) -> FastAPI:
        """Start the actors, wait until every engine responds, and return the head app."""
        config = self.config
        model_config, _ = resolve_model(config.model)
        model_config.check_tp_size(config.tensor_parallel_size)

        catalog = config.catalog_config()
        gauge_ttl_s = config.gauge_ttl_s or 3 * config.flush_interval_s
        self.aggregator = start_aggregator(catalog, {config.model_name: catalog}, gauge_ttl_s)
        ray.get(self.aggregator.configure_model.remote(config.model_name, catalog))
        logger.info(
            "aggregator started; gauges expire after %.1f s without a snapshot", gauge_ttl_s
        )

        start = time.monotonic()
        self.engines = [
            launch_engine(config.engine_config(e), num_cpus=0, name=None)
            for e in range(config.data_parallel_size)
        ]
        try:
            ray.get(
                [engine.load.remote() for engine in self.engines], timeout=ENGINE_START_TIMEOUT_S
            )
        except Exception:
            self.stop()
            raise
        logger.info(
            "%d engine(s) of TP %d ready in %.1f s",
            len(self.engines),
            config.tensor_parallel_size,
            time.monotonic() - start,
        )

        model = ServedModel(
            name=config.model_name,
            vocab_size=model_config.vocab_size,
            max_model_len=config.max_model_len,
            created=int(time.time()),
        )
        service = CompletionService(model, EngineRouter(self.engines, config.routing))
        self.app = create_app(self.aggregator, service)
        return self.app

    def stop(self, timeout_s: float = 30.0) -> None:
        """Shut the engines down (final metrics flushes included) and release their actors."""
        engines, self.engines = self.engines, []
        if engines:
            try:
                ray.get([engine.shutdown.remote() for engine in engines], timeout=timeout_s)
            except Exception as error:
                logger.warning("engine shutdown failed: %s: %s", type(error).__name__, error)
            for engine in engines:
                ray.kill(engine, no_restart=True)
            logger.info("stopped %d engine(s)", len(engines))
