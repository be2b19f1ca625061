"""The step input an engine sends its TP workers, and the output they return."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SequenceChunk:
    """The tokens of one request that a step computes.

    `token_ids` are the tokens to run this step: a prefill chunk or one
    decode token. They sit at positions `start_position ..
    start_position + len(token_ids) - 1`. `block_table` lists the physical
    KV blocks of the request in order and covers every position up to the
    last one computed here. `sample` requests a next token after the chunk:
    true for decode and for the last chunk of a prefill.
    """

    request_id: str
    token_ids: tuple[int, ...]
    start_position: int
    block_table: tuple[int, ...]
    sample: bool


@dataclass(frozen=True, slots=True)
class StepInput:
    """One engine step: every scheduled chunk, in batch order."""

    step: int
    chunks: tuple[SequenceChunk, ...]

    @property
    def num_tokens(self) -> int:
        return sum(len(chunk.token_ids) for chunk in self.chunks)


@dataclass(frozen=True, slots=True)
class StepOutput:
    """One TP worker's result for a step.

    `sampled` maps request id to the next token for every chunk with
    `sample` set; every rank returns the same tokens. Times are wall-clock
    seconds measured on the worker: `forward_time_s` excludes the time spent
    in collectives, which `collective_time_s` holds.
    """

    step: int
    rank: int
    sampled: dict[str, int]
    num_tokens: int
    forward_time_s: float
    collective_time_s: float

    @property
    def step_time_s(self) -> float:
        return self.forward_time_s + self.collective_time_s


@dataclass(slots=True)
class StepTiming:
    """Time accounting of a step loop, for measuring what metrics cost it.

    `step_s` is the wall-clock time of the steps. `record_s` is the CPU time
    the stepping thread spent recording their stats (thread CPU time, so time
    spent waiting for the GIL does not count), and `flush_s` the CPU time of
    the reporter's flusher thread.
    """

    steps: int = 0
    step_s: float = 0.0
    record_s: float = 0.0
    flush_s: float = 0.0

    def add(self, step_s: float, record_s: float) -> None:
        self.steps += 1
        self.step_s += step_s
        self.record_s += record_s
