"""TP worker Ray actors, one per TP rank, and the launcher that starts them on a placement group.

Each `TPWorker` keeps one rank's model shard and KV cache and joins a
torch.distributed group with the other ranks of its engine: gloo on CPU,
NCCL when every rank gets a GPU. `TPGroup` is the handle an engine keeps.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import torch
import torch.distributed as dist
from ray.exceptions import GetTimeoutError, RayError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tpmetrics.snapshot import SourceId, SourceKind
from tpmetrics.workers.model import LlamaShard, build_model
from tpmetrics.workers.model_config import ModelConfig, resolve_model
from tpmetrics.workers.step import StepInput, StepOutput, StepTiming

if TYPE_CHECKING:
    from tpmetrics.workers.reporter import Reporter, Series

logger = logging.getLogger(__name__)

PLACEMENT_TIMEOUT_S = 60.0
SETUP_TIMEOUT_S = 300.0
SHUTDOWN_TIMEOUT_S = 30.0
# How long a rank waits in a rendezvous or a collective for the other ranks.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """The settings every rank of a TP group starts with. Only the rank differs."""

    config: ModelConfig
    weights_dir: Path | None
    tp_size: int
    use_gpu: bool
    model_name: str
    engine: int
    num_blocks: int
    block_size: int
    seed: int
    report_metrics: bool
    flush_interval_s: float
    engine_life: str = ""


@dataclass(frozen=True, slots=True)
class _RankSeries:
    steps: Series
    tokens: Series
    step_time: Series
    forward_time: Series
    collective_time: Series
    last_step_time: Series


class TPWorker:
    """One TP rank: a model shard, its KV cache and its per-rank metrics.

    Ray runs this class as an actor (see `TPGroup.create`). The constructor
    only stores the spec. `setup` joins the process group and loads the
    model, so the launcher can wait for every rank with a timeout.
    """

    def __init__(self, spec: WorkerSpec, rank: int) -> None:
        self._spec = spec
        self._rank = rank
        self._model: LlamaShard | None = None
        self._reporter: Reporter | None = None
        self._series: _RankSeries | None = None
        self._timing = StepTiming()

    def rendezvous(self) -> str:
        """Return a `tcp://` init method on this rank's node, with a port free there now.

        The launcher calls this on rank 0 and passes the address to every rank's `setup`.
        """
        host: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        return f"tcp://{host}:{_free_port(host)}"

    def setup(self, init_method: str) -> None:
        """Join the TP process group, load this rank's model shard and allocate its KV cache."""
        spec = self._spec
        # One thread per rank: TP ranks on one machine would otherwise
        # oversubscribe its cores.
        torch.set_num_threads(1)

        device = torch.device("cpu")
        backend = "gloo"
        if spec.use_gpu:
            # Ray sets CUDA_VISIBLE_DEVICES to the one GPU of this rank's bundle.
            device = torch.device("cuda", 0)
            torch.cuda.set_device(device)
            backend = "nccl"
        dist.init_process_group(
            backend,
            init_method=init_method,
            world_size=spec.tp_size,
            rank=self._rank,
            timeout=COLLECTIVE_TIMEOUT,
        )

        self._model = build_model(
            spec.config,
            spec.weights_dir,
            seed=spec.seed,
            tp_rank=self._rank,
            tp_size=spec.tp_size,
            device=device,
        )
        self._model.allocate_kv_cache(spec.num_blocks, spec.block_size)
        if spec.report_metrics:
            self._connect_reporter()
        logger.info(
            "engine %d rank %d: model %r ready on %s (backend %s, %d KV blocks of %d tokens)",
            spec.engine,
            self._rank,
            spec.model_name,
            device,
            backend,
            spec.num_blocks,
            spec.block_size,
        )

    def execute_step(self, step_input: StepInput) -> StepOutput:
        """Run one step on this rank.

        Every rank must get the same step, because the ranks meet in the same all-reduce calls.
        """
        if self._model is None:
            raise RuntimeError(f"engine {self._spec.engine} rank {self._rank}: setup has not run")
        start = time.perf_counter()
        result = self._model.forward(step_input)
        output = StepOutput(
            step=step_input.step,
            rank=self._rank,
            sampled=result.sampled,
            num_tokens=step_input.num_tokens,
            forward_time_s=result.forward_time_s,
            collective_time_s=result.collective_time_s,
        )
        recorded = time.thread_time()
        self._record(output)
        self._timing.add(time.perf_counter() - start, time.thread_time() - recorded)
        return output

    def step_timing(self) -> StepTiming:
        """Return the seconds this rank spent in steps and in recording their metrics."""
        if self._reporter is not None:
            self._timing.flush_s = self._reporter.flush_cpu_s
        return self._timing

    def shutdown(self) -> None:
        """Send the final metrics snapshot and leave the process group."""
        if self._reporter is not None:
            self._reporter.close()
            self._reporter = None
        if dist.is_initialized():
            dist.destroy_process_group()
        logger.info("engine %d rank %d: stopped", self._spec.engine, self._rank)

    def _connect_reporter(self) -> None:
        # Imported here because the reporter loads the aggregator's modules,
        # which a worker without metrics never needs.
        from tpmetrics.workers.reporter import connect_reporter  # noqa: PLC0415

        spec = self._spec
        source = SourceId(SourceKind.RANK, spec.model_name, engine=spec.engine, rank=self._rank)
        reporter = connect_reporter(
            source, flush_interval_s=spec.flush_interval_s, era=spec.engine_life
        )
        self._series = _RankSeries(
            steps=reporter.series("tpmetrics:rank_steps"),
            tokens=reporter.series("tpmetrics:rank_tokens"),
            step_time=reporter.series("tpmetrics:rank_step_time_seconds"),
            forward_time=reporter.series("tpmetrics:rank_forward_time_seconds"),
            collective_time=reporter.series("tpmetrics:rank_collective_time_seconds"),
            last_step_time=reporter.series("tpmetrics:rank_last_step_time_seconds"),
        )
        self._reporter = reporter

    def _record(self, output: StepOutput) -> None:
        if self._reporter is None or self._series is None:
            return
        series = self._series
        self._reporter.record(
            step=output.step,
            counters=[(series.steps, 1), (series.tokens, output.num_tokens)],
            observations=[
                (series.step_time, output.step_time_s),
                (series.forward_time, output.forward_time_s),
                (series.collective_time, output.collective_time_s),
            ],
            gauges=[(series.last_step_time, output.step_time_s)],
        )


class TPGroup:
    """The TP worker actors of one engine, one per rank, on one placement group.

    Example, from a Ray driver or from inside an actor:

        group = TPGroup.create(
            "tiny-llama", 2, model_name="tiny", engine=0, num_blocks=256, block_size=16
        )
        outputs = group.execute_step(step_input)  # one StepOutput per rank
        group.shutdown()
    """

    def __init__(
        self,
        workers: list[Any],
        placement_group: PlacementGroup,
        *,
        model_name: str,
        engine: int,
        backend: str,
    ) -> None:
        self.workers = workers
        self.placement_group = placement_group
        self.model_name = model_name
        self.engine = engine
        self.backend = backend
        self._closed = False

    @property
    def tp_size(self) -> int:
        return len(self.workers)

    @classmethod
    def create(
        cls,
        model: str,
        tp_size: int,
        *,
        model_name: str,
        engine: int,
        num_blocks: int,
        block_size: int,
        seed: int = 0,
        report_metrics: bool = True,
        flush_interval_s: float = 1.0,
        engine_life: str = "",
    ) -> TPGroup:
        """Start `tp_size` workers of `model` (a preset name or a checkpoint directory).

        Raises:
            ValueError: the model is unknown or does not split over `tp_size`
                ranks, or the KV cache has no blocks.
            TimeoutError: the cluster has no room for the placement group
                within PLACEMENT_TIMEOUT_S seconds.
            ray.exceptions.RayError: a worker failed during setup.
        """
        config, weights_dir = resolve_model(model)
        config.check_tp_size(tp_size)
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"engine {engine}: num_blocks and block_size must be at least 1, "
                f"got {num_blocks} and {block_size}"
            )
        use_gpu = _gpus_for_every_rank(tp_size)
        bundle = {"GPU": 1.0} if use_gpu else {"CPU": 1.0}
        group_handle = _reserve(tp_size, bundle, engine)
        spec = WorkerSpec(
            config=config,
            weights_dir=weights_dir,
            tp_size=tp_size,
            use_gpu=use_gpu,
            model_name=model_name,
            engine=engine,
            num_blocks=num_blocks,
            block_size=block_size,
            seed=seed,
            report_metrics=report_metrics,
            flush_interval_s=flush_interval_s,
            engine_life=engine_life,
        )
        workers = _start_workers(spec, group_handle)
        group = cls(
            workers,
            group_handle,
            model_name=model_name,
            engine=engine,
            backend="nccl" if use_gpu else "gloo",
        )
        try:
            init_method = ray.get(workers[0].rendezvous.remote(), timeout=SETUP_TIMEOUT_S)
            setups = [worker.setup.remote(init_method) for worker in workers]
            ray.get(setups, timeout=SETUP_TIMEOUT_S)
        except BaseException:
            logger.exception("engine %d: TP group setup failed; stopping its workers", engine)
            group._release()
            raise
        logger.info(
            "engine %d: TP group of %d ranks for model %r started (backend %s)",
            engine,
            tp_size,
            model_name,
            group.backend,
        )
        return group

    def step_timings(self) -> list[StepTiming]:
        """Return each rank's step and recording seconds, in rank order."""
        timings: list[StepTiming] = ray.get([w.step_timing.remote() for w in self.workers])
        return timings

    def execute_step(self, step_input: StepInput) -> list[StepOutput]:
        """Run one step on every rank and return their outputs in rank order."""
        if self._closed:
            raise RuntimeError(f"engine {self.engine}: the TP group is shut down")
        outputs: list[StepOutput] = ray.get(
            [worker.execute_step.remote(step_input) for worker in self.workers]
        )
        return outputs

    def shutdown(self) -> None:
        """Stop every worker and remove the placement group; later calls do nothing."""
        if self._closed:
            return
        try:
            ray.get(
                [worker.shutdown.remote() for worker in self.workers], timeout=SHUTDOWN_TIMEOUT_S
            )
        except (RayError, GetTimeoutError) as error:
            logger.warning(
                "engine %d: a TP worker failed to shut down cleanly: %s", self.engine, error
            )
        self._release()
        logger.info("engine %d: TP group stopped", self.engine)

    def _release(self) -> None:
        self._closed = True
        for worker in self.workers:
            ray.kill(worker)
        remove_placement_group(self.placement_group)


def _gpus_for_every_rank(tp_size: int) -> bool:
    """Tell whether torch was built with CUDA and the cluster has a GPU for every rank."""
    # The launcher may run in an actor without a GPU, where CUDA shows no
    # devices, so this reads Ray's cluster resources instead of querying CUDA.
    gpus: float = ray.cluster_resources().get("GPU", 0.0)  # type: ignore[no-untyped-call]
    return torch.version.cuda is not None and gpus >= tp_size


def _reserve(tp_size: int, bundle: dict[str, float], engine: int) -> PlacementGroup:
    group_handle: PlacementGroup = placement_group(
        # One node for the whole group: TP all-reduces every layer, which
        # only pays off over a node's own interconnect.
        [dict(bundle) for _ in range(tp_size)],
        strategy="STRICT_PACK",
    )
    try:
        ray.get(group_handle.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except GetTimeoutError:
        remove_placement_group(group_handle)
        raise TimeoutError(
            f"engine {engine}: placement group of {tp_size} bundles {bundle} not ready "
            f"after {PLACEMENT_TIMEOUT_S} s; free or add resources, or lower the TP size"
        ) from None
    return group_handle


def _start_workers(spec: WorkerSpec, group_handle: PlacementGroup) -> list[Any]:
    actor_class = ray.remote(TPWorker)
    workers = []
    for rank in range(spec.tp_size):
        strategy = PlacementGroupSchedulingStrategy(
            placement_group=group_handle, placement_group_bundle_index=rank
        )
        options = actor_class.options(
            num_cpus=0 if spec.use_gpu else 1,
            num_gpus=1 if spec.use_gpu else 0,
            scheduling_strategy=strategy,
        )
        workers.append(options.remote(spec, rank))
    return workers


def _free_port(host: str) -> int:
    # NOTE: another process may take the port before rank 0 binds it; setup
    # then fails with an address-in-use error.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
