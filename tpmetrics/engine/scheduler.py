"""Continuous batching with chunked prefill, prefix caching and preemption by recompute.

Each step the scheduler first gives running requests their next tokens
(decodes before unfinished prefills), then admits waiting requests in
arrival order while the batch has room. A step computes at most
`max_num_batched_tokens` tokens, so a long prompt is prefilled in chunks over
several steps. When the KV cache runs out of blocks, the running request
admitted last loses its blocks and goes back to the front of the waiting
queue. It recomputes its tokens when it is admitted again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tpmetrics.engine.block_manager import BlockManager, PrefixHit
from tpmetrics.engine.request import FinishReason, Request, RequestState, SamplingParams
from tpmetrics.engine.stats import (
    FinishedRequestStats,
    IterationStats,
    SchedulerStats,
    StepStats,
    finished_request_stats,
)
from tpmetrics.workers.step import SequenceChunk, StepInput, StepOutput

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Limits of one engine's batch and KV cache.

    `max_model_len` bounds prompt plus output tokens of a request.
    `eos_token_id` finishes a request with reason `stop` unless it ignores
    EOS; None means the model has no such token.
    """

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int = 2048
    num_blocks: int = 256
    block_size: int = 16
    enable_prefix_caching: bool = True
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_model_len",
            "num_blocks",
            "block_size",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"scheduler config: {name} must be at least 1, got {value}")


@dataclass(frozen=True, slots=True)
class ScheduledRequest:
    request: Request
    num_new_tokens: int
    sample: bool


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    """One step to run: the workers' input and which request each chunk belongs to."""

    step_input: StepInput
    scheduled: tuple[ScheduledRequest, ...]

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """The outcome of one step: a token per sampled request, and the requests it finished."""

    new_tokens: dict[str, int]
    finished: tuple[Request, ...]
    iteration: IterationStats


@dataclass(slots=True)
class _IterationCounts:
    num_prompt_tokens: int = 0
    num_prompt_tokens_computed: int = 0
    num_prompt_tokens_cached: int = 0
    num_generation_tokens: int = 0
    time_to_first_tokens: list[float] = field(default_factory=list)
    inter_token_latencies: list[float] = field(default_factory=list)

    def freeze(self) -> IterationStats:
        return IterationStats(
            num_prompt_tokens=self.num_prompt_tokens,
            num_prompt_tokens_computed=self.num_prompt_tokens_computed,
            num_prompt_tokens_cached=self.num_prompt_tokens_cached,
            num_generation_tokens=self.num_generation_tokens,
            time_to_first_tokens=tuple(self.time_to_first_tokens),
            inter_token_latencies=tuple(self.inter_token_latencies),
        )


class Scheduler:
    """Decides what each engine step computes, and applies what it sampled.

    Not thread-safe: the caller serializes every call. `clock` is the
    engine's monotonic clock and `wall_clock` the wall clock that request
    arrival times use; tests inject both.
    """

    def __init__(
        self,
        config: SchedulerConfig,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.block_manager = BlockManager(
            config.num_blocks, config.block_size, config.enable_prefix_caching
        )
        self._clock = clock
        self._wall_clock = wall_clock
        self._requests: dict[str, Request] = {}
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._step = 0
        self._num_preemptions = 0
        self._finished_stats: list[FinishedRequestStats] = []

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def step(self) -> int:
        """The number of the last scheduled step; 0 before the first."""
        return self._step

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def get_request(self, request_id: str) -> Request | None:
        return self._requests.get(request_id)

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        arrival_time: float,
    ) -> Request:
        """Queue a request; raise ValueError if it can never fit this engine."""
        if request_id in self._requests:
            raise ValueError(f"request {request_id!r} is already in the engine; use a new id")
        self._check_fits(request_id, len(prompt_token_ids), params.max_tokens)
        request = Request(request_id, tuple(prompt_token_ids), params, arrival_time)
        request.queued_time = self._clock()
        self._requests[request_id] = request
        self._waiting.append(request)
        return request

    def _check_fits(self, request_id: str, num_prompt_tokens: int, max_tokens: int) -> None:
        if num_prompt_tokens < 1:
            raise ValueError(f"request {request_id!r} has an empty prompt; send at least 1 token")
        total = num_prompt_tokens + max_tokens
        if total > self.config.max_model_len:
            raise ValueError(
                f"request {request_id!r}: the prompt has {num_prompt_tokens} tokens and "
                f"max_tokens is {max_tokens}, {total} in all, more than max_model_len "
                f"{self.config.max_model_len}; shorten the prompt or lower max_tokens"
            )
        # The last sampled token is never fed back, so its KV is never stored.
        needed = self.block_manager.blocks_needed(total - 1)
        if needed > self.config.num_blocks:
            raise ValueError(
                f"request {request_id!r} needs {needed} KV blocks for {total} tokens, but the "
                f"cache has {self.config.num_blocks}; lower max_tokens or add KV blocks"
            )

    def abort(self, request_id: str) -> Request | None:
        """Finish a request with reason `abort` and free its blocks; None if it is unknown."""
        request = self._requests.get(request_id)
        if request is None:
            return None
        if request.state is RequestState.RUNNING:
            self._running.remove(request)
        else:
            self._waiting.remove(request)
        self._finish(request, FinishReason.ABORT)
        return request

    def fail_running(self) -> list[Request]:
        """Finish every running request with reason `error`, after a step failed."""
        failed = list(self._running)
        self._running.clear()
        for request in failed:
            self._finish(request, FinishReason.ERROR)
        return failed

    def fail_all(self) -> list[Request]:
        """Finish every request, running or waiting, with reason `error`."""
        failed = self.fail_running()
        while self._waiting:
            request = self._waiting.popleft()
            self._finish(request, FinishReason.ERROR)
            failed.append(request)
        return failed

    def schedule(self) -> SchedulerOutput:
        """Pick the requests and tokens of the next step and reserve their KV blocks.

        The step number advances only when something is scheduled.
        """
        batch = _Batch(self.config.max_num_batched_tokens)
        preempted = self._schedule_running(batch)
        if not preempted:
            self._schedule_waiting(batch)
        if batch.scheduled:
            self._step += 1
        chunks = tuple(self._chunk(item) for item in batch.scheduled)
        return SchedulerOutput(StepInput(self._step, chunks), tuple(batch.scheduled))

    def _schedule_running(self, batch: _Batch) -> bool:
        # Decodes first, then running requests with more than one token to compute.
        order = sorted(self._running, key=lambda r: r.num_tokens - r.num_computed_tokens > 1)
        preempted = False
        for request in order:
            if request.state is not RequestState.RUNNING or batch.budget == 0:
                continue
            num_new = min(request.num_tokens - request.num_computed_tokens, batch.budget)
            total = request.num_computed_tokens + num_new
            while not self.block_manager.allocate(request.request_id, total):
                victim = self._pick_victim(batch)
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
            else:
                batch.add(request, num_new)
        return preempted

    def _pick_victim(self, batch: _Batch) -> Request:
        # The request admitted last among those this step has not scheduled yet.
        for request in reversed(self._running):
            if request.request_id not in batch.request_ids:
                return request
        raise AssertionError(
            "every running request is scheduled, but one is still waiting for blocks"
        )

    def _preempt(self, request: Request) -> None:
        self._running.remove(request)
        self.block_manager.free(request.request_id)
        request.state = RequestState.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self._num_preemptions += 1
        self._waiting.appendleft(request)
        logger.debug("preempted request %s after %d tokens", request.request_id, request.num_tokens)

    def _schedule_waiting(self, batch: _Batch) -> None:
        while self._waiting and batch.budget > 0 and len(self._running) < self.config.max_num_seqs:
            request = self._waiting[0]
            prefix = self.block_manager.lookup(request.all_token_ids)
            num_new = min(request.num_tokens - prefix.num_tokens, batch.budget)
            total = prefix.num_tokens + num_new
            if not self.block_manager.allocate(request.request_id, total, prefix):
                return
            self._waiting.popleft()
            self._admit(request, prefix)
            batch.add(request, num_new)

    def _admit(self, request: Request, prefix: PrefixHit) -> None:
        if request.first_scheduled_time is None:
            request.first_scheduled_time = self._clock()
            request.num_cached_tokens = prefix.num_tokens
            self.block_manager.count_lookup(request.num_prompt_tokens, prefix)
        request.state = RequestState.RUNNING
        request.num_computed_tokens = prefix.num_tokens
        self._running.append(request)

    def _chunk(self, item: ScheduledRequest) -> SequenceChunk:
        request = item.request
        start = request.num_computed_tokens
        return SequenceChunk(
            request_id=request.request_id,
            token_ids=request.all_token_ids[start : start + item.num_new_tokens],
            start_position=start,
            block_table=self.block_manager.block_table(request.request_id),
            sample=item.sample,
        )

    def update(self, output: SchedulerOutput, step_outputs: Sequence[StepOutput]) -> UpdateResult:
        """Apply a step's sampled tokens; finish requests that hit EOS or max_tokens.

        `step_outputs` are the TP workers' results in rank order; rank 0's
        tokens are used. Requests aborted while the step ran are skipped.
        """
        sampled = _sampled_tokens(output, step_outputs)
        now, now_wall = self._clock(), self._wall_clock()
        counts = _IterationCounts()
        new_tokens: dict[str, int] = {}
        finished: list[Request] = []
        for item in output.scheduled:
            request = item.request
            if request.state is not RequestState.RUNNING:
                continue
            request.num_computed_tokens += item.num_new_tokens
            self.block_manager.cache_full_blocks(
                request.request_id, request.all_token_ids, request.num_computed_tokens
            )
            if not item.sample:
                continue
            token = sampled[request.request_id]
            self._append_token(request, token, now, now_wall, counts)
            new_tokens[request.request_id] = token
            reason = self._stop_reason(request, token)
            if reason is not None:
                self._running.remove(request)
                self._finish(request, reason)
                finished.append(request)
        return UpdateResult(new_tokens, tuple(finished), counts.freeze())

    def _append_token(
        self, request: Request, token: int, now: float, now_wall: float, counts: _IterationCounts
    ) -> None:
        if request.first_token_time is None:
            request.first_token_time = now
            cached = request.num_cached_tokens
            counts.num_prompt_tokens += request.num_prompt_tokens
            counts.num_prompt_tokens_cached += cached
            counts.num_prompt_tokens_computed += request.num_prompt_tokens - cached
            # NOTE: arrival_time is the frontend's wall clock; on another node
            # than this engine, clock skew between the two shifts TTFT and e2e.
            counts.time_to_first_tokens.append(now_wall - request.arrival_time)
        elif request.last_token_time is not None:
            counts.inter_token_latencies.append(now - request.last_token_time)
        request.last_token_time = now
        request.output_token_ids.append(token)
        counts.num_generation_tokens += 1

    def _stop_reason(self, request: Request, token: int) -> FinishReason | None:
        eos = self.config.eos_token_id
        if eos is not None and token == eos and not request.params.ignore_eos:
            return FinishReason.STOP
        if request.num_output_tokens >= request.params.max_tokens:
            return FinishReason.LENGTH
        return None

    def _finish(self, request: Request, reason: FinishReason) -> None:
        request.state = RequestState.FINISHED
        request.finish_reason = reason
        self.block_manager.free(request.request_id)
        del self._requests[request.request_id]
        self._finished_stats.append(finished_request_stats(request, self._wall_clock()))

    def make_stats(self, iteration: IterationStats | None) -> StepStats:
        """Take the stats since the last call: the state now, plus what happened meanwhile."""
        prefix_counts = self.block_manager.take_prefix_cache_counts()
        scheduler = SchedulerStats(
            num_running=len(self._running),
            num_waiting_capacity=len(self._waiting),
            num_waiting_deferred=0,
            kv_cache_usage=self.block_manager.usage,
            prefix_cache_queries=prefix_counts.queries,
            prefix_cache_hits=prefix_counts.hits,
            num_preemptions=self._num_preemptions,
        )
        finished = tuple(self._finished_stats)
        self._finished_stats.clear()
        self._num_preemptions = 0
        return StepStats(self._step, scheduler, iteration, finished)


class _Batch:
    """The requests one step schedules, and the token budget left."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.scheduled: list[ScheduledRequest] = []
        self.request_ids: set[str] = set()

    def add(self, request: Request, num_new_tokens: int) -> None:
        sample = request.num_computed_tokens + num_new_tokens == request.num_tokens
        self.scheduled.append(ScheduledRequest(request, num_new_tokens, sample))
        self.request_ids.add(request.request_id)
        self.budget -= num_new_tokens


def _sampled_tokens(
    output: SchedulerOutput, step_outputs: Sequence[StepOutput]
) -> Mapping[str, int]:
    step = output.step_input.step
    if not step_outputs:
        raise ValueError(f"step {step}: no worker output; expected one per TP rank")
    first = step_outputs[0]
    if first.step != step:
        raise ValueError(f"worker output is for step {first.step}, expected step {step}")
    missing = [
        item.request.request_id
        for item in output.scheduled
        if item.sample
        and not item.request.is_finished
        and item.request.request_id not in first.sampled
    ]
    if missing:
        raise ValueError(f"step {step}: the workers sampled no token for requests {missing}")
    return first.sampled
