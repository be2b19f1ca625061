"""Rate-limited logging of repeated rejections."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable


class RateLimitedLog:
    """Log at most one line per key every `interval_s` seconds, then log how many were held back."""

    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._last: dict[Hashable, float] = {}
        self._held_back: dict[Hashable, int] = {}

    def warning(self, key: Hashable, fmt: str, *args: object) -> None:
        """Log a warning unless one with the same key was logged within the interval."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._held_back[key] = self._held_back.get(key, 0) + 1
            return
        held_back = self._held_back.pop(key, 0)
        self._last[key] = now
        if held_back:
            fmt = f"{fmt} ({held_back} similar messages held back)"
        self._logger.warning(fmt, *args)
