"""The EngineCore Ray actor: one DP replica's scheduler, TP workers and step loop.

A background thread runs engine steps while the engine has requests and
sleeps on a condition variable otherwise. Request streams live on the
actor's event loop; the step thread hands them tokens with
`call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tpmetrics.engine.request import FinalOutput, Request, SamplingParams, TokenBatch
from tpmetrics.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from tpmetrics.engine.stats import CacheConfigInfo, IterationStats, StatsRecorder, StepStats
from tpmetrics.snapshot import SourceId, SourceKind
from tpmetrics.workers.model_config import ModelConfig, resolve_model
from tpmetrics.workers.step import StepTiming
from tpmetrics.workers.tp_worker import TPGroup

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The settings one engine starts with.

    `model` is a preset name or a checkpoint directory; `model_name` is the
    served name that labels its metrics. `engine` is the DP rank.
    `max_model_len` defaults to the model's `max_position_embeddings`.
    """

    model: str
    model_name: str
    engine: int = 0
    tp_size: int = 1
    num_blocks: int = 256
    block_size: int = 16
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    seed: int = 0
    report_metrics: bool = True
    flush_interval_s: float = 1.0


@dataclass(slots=True)
class _Stream:
    """The output queue of one `generate` call, owned by the actor's event loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[int | FinalOutput] = field(default_factory=asyncio.Queue)

    def put_threadsafe(self, *items: int | FinalOutput) -> None:
        """Queue `items` from another thread, all in one event-loop callback.

        So a consumer that wakes on the first item finds the others queued
        too: a request's last token and its `FinalOutput` arrive together.
        """
        try:
            self.loop.call_soon_threadsafe(self._put_all, items)
        except RuntimeError:
            logger.warning("dropped an output for a stream whose event loop is closed")

    def _put_all(self, items: tuple[int | FinalOutput, ...]) -> None:
        for item in items:
            self.queue.put_nowait(item)


_Delivery = tuple[_Stream, list[int | FinalOutput]]


def final_output(request: Request) -> FinalOutput:
    if request.finish_reason is None:
        raise ValueError(f"request {request.request_id} has not finished")
    return FinalOutput(
        finish_reason=request.finish_reason,
        num_prompt_tokens=request.num_prompt_tokens,
        num_output_tokens=request.num_output_tokens,
        num_cached_tokens=request.num_cached_tokens,
    )


class EngineCore:
    """One DP replica: continuous batching over a TP group of worker actors.

    Run it as an async Ray actor with `launch_engine`. Every public method is
    a coroutine that holds the scheduler lock for one scheduler operation at
    most, and `shutdown` runs its slow parts in threads.
    """

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        model_config, _ = resolve_model(config.model)
        self._vocab_size = model_config.vocab_size
        self._scheduler = Scheduler(_scheduler_config(config, model_config))
        # One id for this engine start, shared with its TP workers, so the
        # aggregator counts their engine-scope values once across restarts.
        engine_life = uuid.uuid4().hex
        self._recorder = _connect_recorder(config, engine_life) if config.report_metrics else None

        self._group = TPGroup.create(
            config.model,
            config.tp_size,
            model_name=config.model_name,
            engine=config.engine,
            num_blocks=config.num_blocks,
            block_size=config.block_size,
            seed=config.seed,
            report_metrics=config.report_metrics,
            flush_interval_s=config.flush_interval_s,
            engine_life=engine_life,
        )

        self._wake = threading.Condition()
        self._streams: dict[str, _Stream] = {}
        self._stats_pending = False
        self._timing = StepTiming()
        self._stopping = False
        self._closed = False

        self._thread = threading.Thread(
            target=self._run, name=f"engine-{config.engine}-steps", daemon=True
        )
        self._thread.start()
        logger.info(
            "engine %d: started for model %r (TP %d, %d KV blocks of %d tokens)",
            config.engine,
            config.model_name,
            config.tp_size,
            config.num_blocks,
            config.block_size,
        )

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        max_tokens: int,
        *,
        ignore_eos: bool = False,
        n_param: int | None = 1,
        arrival_time: float | None = None,
    ) -> AsyncIterator[TokenBatch | FinalOutput]:
        """Run one request and stream its output: token batches, then one `FinalOutput`.

        `arrival_time` is the frontend's `time.time()` when the request
        arrived; it defaults to now. A stream that its consumer closes early
        aborts the request.

        Raises:
            ValueError: the request can never fit this engine, a token id is
                outside the vocabulary, max_tokens is below 1, or the id is in use.
            RuntimeError: the engine is shut down.
        """
        self._check_token_ids(request_id, prompt_token_ids)
        params = SamplingParams(max_tokens=max_tokens, n=n_param, ignore_eos=ignore_eos)
        arrival = time.time() if arrival_time is None else arrival_time
        stream = _Stream(asyncio.get_running_loop())
        with self._wake:
            if self._stopping:
                raise RuntimeError(f"engine {self._config.engine} is shut down")
            self._scheduler.add_request(request_id, prompt_token_ids, params, arrival)
            self._streams[request_id] = stream
            self._wake.notify()
        finished = False
        try:
            while not finished:
                tokens, final = await _next_items(stream.queue)
                if tokens:
                    yield TokenBatch(tuple(tokens), None if final is None else final.finish_reason)
                if final is not None:
                    finished = True
                    yield final
        finally:
            if not finished:
                self._abort(request_id, notify_stream=False)

    def _check_token_ids(self, request_id: str, token_ids: list[int]) -> None:
        # One bad token id would fail the whole step, and every request in it.
        invalid = [token for token in token_ids if not 0 <= token < self._vocab_size]
        if invalid:
            raise ValueError(
                f"request {request_id!r}: token ids {invalid[:5]} are outside the vocabulary "
                f"of {self._vocab_size} tokens of model {self._config.model_name!r}"
            )

    async def abort(self, request_id: str) -> bool:
        """Finish a request with reason `abort` and free its KV blocks at once.

        Returns False when the engine has no such request.
        """
        return self._abort(request_id, notify_stream=True)

    async def load(self) -> int:
        """Return the number of running and waiting requests, for least-loaded routing."""
        with self._wake:
            return self._scheduler.num_running + self._scheduler.num_waiting

    async def kv_cache_usage(self) -> float:
        """Return the fraction of KV blocks in use, from 0 to 1."""
        with self._wake:
            return self._scheduler.block_manager.usage

    async def shutdown(self) -> None:
        """Abort every request, stop the step loop, flush metrics and stop the TP group."""
        if self._closed:
            return
        self._closed = True
        with self._wake:
            self._stopping = True
            self._wake.notify()
        await asyncio.to_thread(self._thread.join)
        for request_id in list(self._streams):
            self._abort(request_id, notify_stream=True)
        await asyncio.to_thread(self._close_recorder)
        await asyncio.to_thread(self._group.shutdown)
        logger.info("engine %d: stopped", self._config.engine)

    def _close_recorder(self) -> None:
        if self._recorder is None:
            return
        with self._wake:
            stats = self._scheduler.make_stats(None)
        self._record(stats)
        self._recorder.close()

    def _abort(self, request_id: str, notify_stream: bool) -> bool:
        with self._wake:
            request = self._scheduler.abort(request_id)
            stream = self._streams.pop(request_id, None)
            self._stats_pending = True
            self._wake.notify()
        if request is None:
            return False
        logger.debug("engine %d: aborted request %s", self._config.engine, request_id)
        if notify_stream and stream is not None:
            stream.put_threadsafe(final_output(request))
        return True

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._run_once()
            except Exception:
                logger.exception(
                    "engine %d: the step loop failed; finishing every request with reason error",
                    self._config.engine,
                )
                with self._wake:
                    failed = self._scheduler.fail_all()
                    deliveries = self._deliveries({}, tuple(failed))
                    stats = self._take_stats(None)
                self._deliver(deliveries)
                self._record(stats)

    def _run_once(self) -> None:
        """Wait for work, then run one step or record the stats of an idle engine."""
        with self._wake:
            self._wake.wait_for(self._has_work)
            if self._stopping:
                return
            if self._scheduler.has_unfinished_requests():
                output: SchedulerOutput | None = self._scheduler.schedule()
                idle_stats = None
            else:
                output = None
                idle_stats = self._take_stats(None)
        if output is not None:
            self._run_step(output)
        elif idle_stats is not None:
            self._record(idle_stats)

    def _has_work(self) -> bool:
        return self._stopping or self._stats_pending or self._scheduler.has_unfinished_requests()

    def _take_stats(self, iteration: IterationStats | None) -> StepStats:
        self._stats_pending = False
        return self._scheduler.make_stats(iteration)

    def _run_step(self, output: SchedulerOutput) -> None:
        if output.is_empty:
            # Cannot happen while every request fits the cache alone; wait
            # rather than spin if it does.
            logger.error("engine %d: scheduled an empty step", self._config.engine)
            time.sleep(0.01)
            return
        start = time.perf_counter()
        try:
            step_outputs = self._group.execute_step(output.step_input)
            with self._wake:
                result = self._scheduler.update(output, step_outputs)
                deliveries = self._deliveries(result.new_tokens, result.finished)
                stats = self._take_stats(result.iteration)
        except Exception:
            logger.exception(
                "engine %d: step %d failed; finishing its running requests with reason error",
                self._config.engine,
                output.step_input.step,
            )
            with self._wake:
                failed = self._scheduler.fail_running()
                deliveries = self._deliveries({}, tuple(failed))
                stats = self._take_stats(None)
        self._deliver(deliveries)
        recorded = time.thread_time()
        self._record(stats)
        self._timing.add(time.perf_counter() - start, time.thread_time() - recorded)

    async def step_timing(self) -> tuple[StepTiming, list[StepTiming]]:
        """Return the seconds this engine spent in steps and in recording, then each rank's."""
        ranks = await asyncio.gather(*(w.step_timing.remote() for w in self._group.workers))
        if self._recorder is not None:
            self._timing.flush_s = self._recorder.flush_cpu_s
        return self._timing, list(ranks)

    def _deliveries(
        self, new_tokens: dict[str, int], finished: tuple[Request, ...]
    ) -> list[_Delivery]:
        items: dict[str, tuple[_Stream, list[int | FinalOutput]]] = {}
        for request_id, token in new_tokens.items():
            stream = self._streams.get(request_id)
            if stream is not None:
                items[request_id] = (stream, [token])
        for request in finished:
            stream = self._streams.pop(request.request_id, None)
            if stream is not None:
                items.setdefault(request.request_id, (stream, []))[1].append(final_output(request))
        return list(items.values())

    def _deliver(self, deliveries: list[_Delivery]) -> None:
        for stream, stream_items in deliveries:
            stream.put_threadsafe(*stream_items)

    def _record(self, stats: StepStats) -> None:
        if self._recorder is None:
            return
        try:
            self._recorder.record(stats)
        except Exception:
            logger.exception(
                "engine %d: recording the stats of step %d failed", self._config.engine, stats.step
            )


async def _next_items(
    queue: asyncio.Queue[int | FinalOutput],
) -> tuple[list[int], FinalOutput | None]:
    """Wait for at least one item, then take every item already queued."""
    items = [await queue.get()]
    while not queue.empty():
        items.append(queue.get_nowait())
    tokens = [item for item in items if isinstance(item, int)]
    finals = [item for item in items if isinstance(item, FinalOutput)]
    return tokens, finals[0] if finals else None


def _scheduler_config(config: EngineConfig, model_config: ModelConfig) -> SchedulerConfig:
    limit = model_config.max_position_embeddings
    max_model_len = limit if config.max_model_len is None else config.max_model_len
    if max_model_len > limit:
        raise ValueError(
            f"engine {config.engine}: max_model_len {max_model_len} exceeds the "
            f"max_position_embeddings {limit} of model {config.model!r}; lower max_model_len"
        )
    return SchedulerConfig(
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        max_model_len=max_model_len,
        num_blocks=config.num_blocks,
        block_size=config.block_size,
        enable_prefix_caching=config.enable_prefix_caching,
        eos_token_id=model_config.eos_token_id,
    )


def _connect_recorder(config: EngineConfig, engine_life: str) -> StatsRecorder[Any]:
    # Imported here so that an engine without metrics never needs the aggregator's modules.
    from tpmetrics.workers.reporter import connect_reporter  # noqa: PLC0415

    source = SourceId(SourceKind.ENGINE, config.model_name, engine=config.engine)
    reporter = connect_reporter(source, flush_interval_s=config.flush_interval_s, era=engine_life)
    cache_info = CacheConfigInfo(
        block_size=config.block_size,
        num_gpu_blocks=config.num_blocks,
        enable_prefix_caching=config.enable_prefix_caching,
    )
    return StatsRecorder(reporter, cache_info)


def launch_engine(config: EngineConfig, **actor_options: Any) -> Any:
    """Start an `EngineCore` actor and return its handle.

    `actor_options` go to Ray's `.options()`, for example `name` or
    `num_cpus`. Example:

        engine = launch_engine(EngineConfig("tiny-llama", "tiny", tp_size=2))
        async for ref in engine.generate.remote("r1", [1, 2, 3], max_tokens=8):
            item = await ref
    """
    import ray  # noqa: PLC0415

    return ray.remote(EngineCore).options(**actor_options).remote(config)
