"""Picks the DP replica (engine) for each request: round-robin or least-loaded."""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


class Routing(enum.Enum):
    ROUND_ROBIN = "round-robin"
    LEAST_LOADED = "least-loaded"


class EngineRouter:
    """Holds the engine actor handles and counts the requests in flight on each.

    Least-loaded routing uses those in-flight counts, which this head keeps
    itself, so picking an engine costs no call to the engines.
    NOTE: with several heads in front of the same engines, each head counts only
    its own requests.
    """

    def __init__(self, engines: Sequence[Any], routing: Routing = Routing.LEAST_LOADED) -> None:
        if not engines:
            raise ValueError("an EngineRouter needs at least one engine")
        self.engines = list(engines)
        self.routing = routing
        self.in_flight = [0] * len(self.engines)
        self._next = itertools.cycle(range(len(self.engines)))

    def pick(self) -> int:
        """Return the index of the engine for the next request."""
        if self.routing is Routing.ROUND_ROBIN:
            return next(self._next)
        return min(range(len(self.engines)), key=lambda i: (self.in_flight[i], i))

    @contextmanager
    def track(self, index: int) -> Iterator[Any]:
        """Count one request in flight on engine `index` while the block runs; yield its handle."""
        self.in_flight[index] += 1
        try:
            yield self.engines[index]
        finally:
            self.in_flight[index] -= 1
