"""Per-step engine stats as typed values, with vLLM's definitions.

The scheduler produces one `StepStats` per engine step. `step_record` maps
it to vLLM's families as plain data, and `StatsRecorder` sends that to a
reporter in one call. Latencies are in seconds.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar

from tpmetrics.engine.request import FinishReason, Request


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """The scheduler's state after a step, and its cache and preemption events during it.

    `num_waiting_capacity` counts waiting requests held back by KV or batch
    capacity. `num_waiting_deferred` counts those held by a transient
    constraint. This engine has no such constraint, so it is always 0.
    `prefix_cache_queries` and `prefix_cache_hits` are in tokens.
    """

    num_running: int
    num_waiting_capacity: int
    num_waiting_deferred: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int

    @property
    def num_waiting(self) -> int:
        return self.num_waiting_capacity + self.num_waiting_deferred


@dataclass(frozen=True, slots=True)
class IterationStats:
    """Tokens and token latencies of one step.

    Prompt tokens count in the step that produces a request's first token,
    all of them at once, as vLLM counts them: a chunked prefill adds nothing
    before its last chunk, and a recompute after preemption adds nothing.
    `num_prompt_tokens` includes cached tokens; `num_prompt_tokens_computed`
    excludes them.
    """

    num_prompt_tokens: int = 0
    num_prompt_tokens_computed: int = 0
    num_prompt_tokens_cached: int = 0
    num_generation_tokens: int = 0
    time_to_first_tokens: tuple[float, ...] = ()
    inter_token_latencies: tuple[float, ...] = ()

    @property
    def num_iteration_tokens(self) -> int:
        """Computed prompt tokens plus generated tokens: `vllm:iteration_tokens_total`."""
        return self.num_prompt_tokens_computed + self.num_generation_tokens


@dataclass(frozen=True, slots=True)
class RequestTimes:
    """Phase durations of one finished request.

    queued: first scheduled minus queued. prefill: first token minus first
    scheduled. decode: last token minus first token. inference: last token
    minus first scheduled. Preemptions fall inside these intervals. `e2e` is
    the frontend's arrival to the finish, on the wall clock. A field is None
    when the request ended before the phase began.
    """

    e2e: float | None
    queued: float | None
    prefill: float | None
    decode: float | None
    inference: float | None
    mean_time_per_output_token: float | None


@dataclass(frozen=True, slots=True)
class FinishedRequestStats:
    """The values that `vllm:request_*` histograms and `vllm:request_success` take from one request.

    `n_param` is None when the request's `n` is not to be observed.
    """

    finish_reason: FinishReason
    num_prompt_tokens: int
    num_generation_tokens: int
    num_cached_tokens: int
    num_preemptions: int
    max_tokens_param: int
    n_param: int | None
    times: RequestTimes

    @property
    def num_prefill_kv_computed_tokens(self) -> int:
        return self.num_prompt_tokens - max(self.num_cached_tokens, 0)


@dataclass(frozen=True, slots=True)
class StepStats:
    """Everything one engine step reports.

    `iteration` is None for a record made without running a step, such as
    after an abort while the engine is idle.
    """

    step: int
    scheduler: SchedulerStats
    iteration: IterationStats | None
    finished: tuple[FinishedRequestStats, ...]


def measure_request_times(request: Request, now_wall: float) -> RequestTimes:
    """Compute the phase durations of `request`, which finished at wall-clock `now_wall`.

    As in vLLM, a request never scheduled gets no times, one scheduled but
    without a token gets only its queue time, and a request with one token or
    none has a mean time per output token of 0.
    """
    scheduled = request.first_scheduled_time
    if scheduled is None or request.queued_time is None:
        return RequestTimes(None, None, None, None, None, None)
    queued = scheduled - request.queued_time
    first, last = request.first_token_time, request.last_token_time
    if first is None or last is None:
        return RequestTimes(None, queued, None, None, None, None)
    decode = last - first
    num_generated = request.num_output_tokens
    tpot = decode / (num_generated - 1) if num_generated > 1 else 0.0
    return RequestTimes(
        e2e=now_wall - request.arrival_time,
        queued=queued,
        prefill=first - scheduled,
        decode=decode,
        inference=last - scheduled,
        mean_time_per_output_token=tpot,
    )


def finished_request_stats(request: Request, now_wall: float) -> FinishedRequestStats:
    """Summarize a request that has just finished."""
    if request.finish_reason is None:
        raise ValueError(f"request {request.request_id} has no finish reason: finish it first")
    return FinishedRequestStats(
        finish_reason=request.finish_reason,
        num_prompt_tokens=request.num_prompt_tokens,
        num_generation_tokens=request.num_output_tokens,
        num_cached_tokens=request.num_cached_tokens,
        num_preemptions=request.num_preemptions,
        max_tokens_param=request.params.max_tokens,
        n_param=request.params.n,
        times=measure_request_times(request, now_wall),
    )


@dataclass(frozen=True, slots=True)
class CacheConfigInfo:
    """The label values of `vllm:cache_config_info`, as vLLM spells them.

    NOTE: the reference engine sizes its KV cache by a block count, not by a
    fraction of GPU memory, and has no CPU blocks. `gpu_memory_utilization`
    and `num_cpu_blocks` are therefore reported as 0 unless set here.
    """

    block_size: int
    num_gpu_blocks: int
    enable_prefix_caching: bool
    cache_dtype: str = "auto"
    gpu_memory_utilization: float = 0.0
    num_cpu_blocks: int = 0
    prefix_caching_hash_algo: str = "sha256"

    def labels(self) -> tuple[tuple[str, str], ...]:
        return (
            ("block_size", str(self.block_size)),
            ("cache_dtype", self.cache_dtype),
            ("enable_prefix_caching", str(self.enable_prefix_caching)),
            ("gpu_memory_utilization", str(self.gpu_memory_utilization)),
            ("num_gpu_blocks", str(self.num_gpu_blocks)),
            ("num_cpu_blocks", str(self.num_cpu_blocks)),
            ("prefix_caching_hash_algo", self.prefix_caching_hash_algo),
            ("kv_cache_size_tokens", str(self.num_gpu_blocks * self.block_size)),
        )


class SeriesKey(NamedTuple):
    """A family and the label values the engine sets.

    The reporter adds `model_name` and `engine` from its source. A named
    tuple, so hashing and comparing keys on every step runs in C.
    """

    family: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class StepRecord:
    """The arguments of one `reporter.record` call, keyed by series."""

    step: int
    counters: tuple[tuple[SeriesKey, float], ...] = ()
    observations: tuple[tuple[SeriesKey, float], ...] = ()
    gauges: tuple[tuple[SeriesKey, float], ...] = ()


PROMPT_TOKEN_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")

# Deprecated vLLM names that carry the same values as their replacements.
# They are recorded only where the reporter's catalog still shows them.
_DEPRECATED_ALIASES = {
    "vllm:kv_cache_usage_perc": "vllm:gpu_cache_usage_perc",
    "vllm:prefix_cache_queries": "vllm:gpu_prefix_cache_queries",
    "vllm:prefix_cache_hits": "vllm:gpu_prefix_cache_hits",
    "vllm:inter_token_latency_seconds": "vllm:time_per_output_token_seconds",
}

_REQUEST_HISTOGRAMS = (
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:request_num_preemptions",
    "vllm:request_prefill_kv_computed_tokens",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
    "vllm:request_max_num_generation_tokens",
    "vllm:request_params_n",
    "vllm:request_params_max_tokens",
)


def _key(family: str, **labels: str) -> SeriesKey:
    return _cached_key(family, tuple(labels.items()))


@functools.cache
def _cached_key(family: str, labels: tuple[tuple[str, str], ...]) -> SeriesKey:
    return SeriesKey(family, labels)


def _with_aliases(
    pairs: Iterator[tuple[SeriesKey, float]],
) -> tuple[tuple[SeriesKey, float], ...]:
    result: list[tuple[SeriesKey, float]] = []
    for key, value in pairs:
        result.append((key, value))
        alias = _DEPRECATED_ALIASES.get(key.family)
        if alias is not None:
            result.append((SeriesKey(alias, key.labels), value))
    return tuple(result)


def _scheduler_gauges(stats: SchedulerStats) -> Iterator[tuple[SeriesKey, float]]:
    yield _key("vllm:num_requests_running"), stats.num_running
    yield _key("vllm:num_requests_waiting"), stats.num_waiting
    yield _key("vllm:num_requests_waiting_by_reason", reason="capacity"), stats.num_waiting_capacity
    yield _key("vllm:num_requests_waiting_by_reason", reason="deferred"), stats.num_waiting_deferred
    yield _key("vllm:kv_cache_usage_perc"), stats.kv_cache_usage


def _scheduler_counters(stats: SchedulerStats) -> Iterator[tuple[SeriesKey, float]]:
    yield _key("vllm:prefix_cache_queries"), stats.prefix_cache_queries
    yield _key("vllm:prefix_cache_hits"), stats.prefix_cache_hits
    yield _key("vllm:num_preemptions"), stats.num_preemptions


def _iteration_counters(stats: IterationStats) -> Iterator[tuple[SeriesKey, float]]:
    by_source = (stats.num_prompt_tokens_computed, stats.num_prompt_tokens_cached, 0)
    yield _key("vllm:prompt_tokens"), stats.num_prompt_tokens
    for source, value in zip(PROMPT_TOKEN_SOURCES, by_source, strict=True):
        yield _key("vllm:prompt_tokens_by_source", source=source), value
    yield _key("vllm:prompt_tokens_cached"), stats.num_prompt_tokens_cached
    yield _key("vllm:generation_tokens"), stats.num_generation_tokens


def _iteration_observations(stats: IterationStats) -> Iterator[tuple[SeriesKey, float]]:
    yield _key("vllm:iteration_tokens_total"), stats.num_iteration_tokens
    for ttft in stats.time_to_first_tokens:
        yield _key("vllm:time_to_first_token_seconds"), ttft
    for itl in stats.inter_token_latencies:
        yield _key("vllm:inter_token_latency_seconds"), itl


def _finished_counters(finished: FinishedRequestStats) -> Iterator[tuple[SeriesKey, float]]:
    yield _key("vllm:request_success", finished_reason=finished.finish_reason.value), 1


def _finished_observations(finished: FinishedRequestStats) -> Iterator[tuple[SeriesKey, float]]:
    times = finished.times
    values: tuple[float | None, ...] = (
        times.e2e,
        times.queued,
        times.prefill,
        times.decode,
        times.inference,
        times.mean_time_per_output_token,
        finished.num_preemptions,
        finished.num_prefill_kv_computed_tokens,
        finished.num_prompt_tokens,
        finished.num_generation_tokens,
        # Once per request, like n: the head sends the first of n sequences
        # with n_param set. NOTE: that sequence's count replaces the
        # maximum over all n, which greedy decoding makes equal.
        finished.num_generation_tokens if finished.n_param is not None else None,
        finished.n_param,
        finished.max_tokens_param,
    )
    for family, value in zip(_REQUEST_HISTOGRAMS, values, strict=True):
        if value is not None:
            yield _key(family), value


def step_record(stats: StepStats) -> StepRecord:
    """Map one step's stats to counter increments, histogram observations and gauge values."""
    counters = list(_scheduler_counters(stats.scheduler))
    observations: list[tuple[SeriesKey, float]] = []
    if stats.iteration is not None:
        counters.extend(_iteration_counters(stats.iteration))
        observations.extend(_iteration_observations(stats.iteration))
    for finished in stats.finished:
        counters.extend(_finished_counters(finished))
        observations.extend(_finished_observations(finished))
    return StepRecord(
        step=stats.step,
        counters=_with_aliases(iter(counters)),
        observations=_with_aliases(iter(observations)),
        gauges=_with_aliases(_scheduler_gauges(stats.scheduler)),
    )


def initial_record(cache_info: CacheConfigInfo) -> StepRecord:
    """Create every counter and gauge series at its start value, before any traffic."""
    idle = SchedulerStats(0, 0, 0, 0.0, 0, 0, 0)
    counters = [*_scheduler_counters(idle), *_iteration_counters(IterationStats())]
    for reason in FinishReason:
        counters.append((_key("vllm:request_success", finished_reason=reason.value), 0))
    gauges = list(_scheduler_gauges(idle))
    gauges.extend(
        (_key("vllm:engine_sleep_state", sleep_state=state), float(state == "awake"))
        for state in SLEEP_STATES
    )
    gauges.append((SeriesKey("vllm:cache_config_info", cache_info.labels()), 1))
    return StepRecord(
        step=0,
        counters=_with_aliases(iter(counters)),
        gauges=_with_aliases(iter(gauges)),
    )


def histogram_series() -> tuple[SeriesKey, ...]:
    """Return every histogram series the engine observes, deprecated aliases included."""
    families = [
        "vllm:iteration_tokens_total",
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        *_REQUEST_HISTOGRAMS,
    ]
    return tuple(key for key, _ in _with_aliases((_key(family), 0.0) for family in families))


SeriesT = TypeVar("SeriesT")


class Reporter(Protocol[SeriesT]):
    """The part of `tpmetrics.workers.reporter.Reporter` the recorder uses."""

    def series(self, family: str, **labels: str) -> SeriesT: ...

    def record(
        self,
        *,
        step: int,
        counters: list[tuple[SeriesT, float]],
        observations: list[tuple[SeriesT, float]],
        gauges: list[tuple[SeriesT, float]],
    ) -> None: ...

    def has(self, family: str) -> bool: ...

    def close(self) -> None: ...

    @property
    def flush_cpu_s(self) -> float: ...


class StatsRecorder(Generic[SeriesT]):
    """Sends each step's stats to a reporter as one `record` call.

    Every series is created when the recorder starts, and the counters and
    gauges are sent at their start values, so they exist before the first
    request. Families the reporter's catalog hides are skipped.
    """

    def __init__(self, reporter: Reporter[SeriesT], cache_info: CacheConfigInfo) -> None:
        self._reporter = reporter
        start = initial_record(cache_info)
        keys = [key for key, _ in (*start.counters, *start.gauges)]
        keys.extend(histogram_series())
        self._series: dict[SeriesKey, SeriesT] = {
            key: reporter.series(key.family, **dict(key.labels))
            for key in keys
            if reporter.has(key.family)
        }
        self.send(start)

    def record(self, stats: StepStats) -> None:
        self.send(step_record(stats))

    def send(self, record: StepRecord) -> None:
        self._reporter.record(
            step=record.step,
            counters=self._resolve(record.counters),
            observations=self._resolve(record.observations),
            gauges=self._resolve(record.gauges),
        )

    def close(self) -> None:
        """Flush what is pending and stop the reporter."""
        self._reporter.close()

    @property
    def flush_cpu_s(self) -> float:
        """CPU seconds the reporter's flusher thread has spent so far."""
        return self._reporter.flush_cpu_s

    def _resolve(self, pairs: tuple[tuple[SeriesKey, float], ...]) -> list[tuple[SeriesT, float]]:
        series = self._series
        resolved = []
        for key, value in pairs:
            handle = series.get(key)
            if handle is not None:
                resolved.append((handle, value))
        return resolved
