"""One engine request: its tokens, sampling parameters, state and timestamps."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RequestState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


class FinishReason(enum.Enum):
    """The reason a request finished, spelled as vLLM's `finished_reason` label values."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """The sampling parameters the engine acts on or reports.

    `n` is only recorded in `vllm:request_params_n`: every engine request
    produces one sequence, and a frontend fans a request with `n > 1` out into
    `n` engine requests. `None` skips the observation, so that a fan-out is
    observed once.
    """

    max_tokens: int
    n: int | None = 1
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"invalid max_tokens {self.max_tokens}: it must be at least 1")
        if self.n is not None and self.n < 1:
            raise ValueError(f"invalid n {self.n}: it must be at least 1, or None to skip it")


@dataclass(eq=False, slots=True)
class Request:
    """The engine's state of one request.

    `arrival_time` is the frontend's wall clock (`time.time()`) when the
    request arrived; TTFT and end-to-end latency are measured from it. Every
    other timestamp is on the engine's monotonic clock. `num_computed_tokens`
    counts the tokens whose KV is in the cache: a preemption (recompute) resets
    it to 0. `num_cached_tokens` counts the prompt tokens found in the prefix
    cache when the request was first scheduled.
    """

    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams
    arrival_time: float
    state: RequestState = RequestState.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    finish_reason: FinishReason | None = None
    queued_time: float | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt and output tokens so far."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> tuple[int, ...]:
        return self.prompt_token_ids + tuple(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.state is RequestState.FINISHED


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """New output tokens of one request, in order: one per engine step.

    `finish_reason` is set when the request finished right after the last
    of these tokens, so a frontend can mark that token's chunk as the last.
    The `FinalOutput` still follows.
    """

    token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None


@dataclass(frozen=True, slots=True)
class FinalOutput:
    """The last item of a request's output stream."""

    finish_reason: FinishReason
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
