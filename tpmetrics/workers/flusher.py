"""The background thread that sends a reporter's snapshots to the aggregator."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Protocol

from tpmetrics.aggregator.ratelimit import RateLimitedLog
from tpmetrics.snapshot import ReportReply, Snapshot

if TYPE_CHECKING:
    from tpmetrics.workers.reporter import Reporter

logger = logging.getLogger(__name__)


class Sink(Protocol):
    """The destination of snapshots. `send` may block and may raise; the flusher handles both."""

    def send(self, snapshot: Snapshot) -> ReportReply: ...

    def reset(self) -> None:
        """Forget the connection, so the next `send` looks the aggregator up again."""


class Flusher:
    """Sends a snapshot every `interval_s` seconds on a daemon thread.

    A failed or timed-out send is counted as a dropped snapshot and its
    series are sent again with the next one; after a failure, or when the
    aggregator restarted (new `aggregator_id`) or requests it, the next
    snapshot carries the full state.
    """

    def __init__(self, reporter: Reporter, sink: Sink, interval_s: float) -> None:
        if not interval_s > 0:
            raise ValueError(f"invalid flush interval {interval_s!r}: expected seconds > 0")
        self._reporter = reporter
        self._sink = sink
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._send_lock = threading.Lock()
        self._aggregator_id: str | None = None
        self._needs_full = True
        self.cpu_s = 0.0
        self._log = RateLimitedLog(logger, interval_s=30.0)
        self._thread = threading.Thread(
            target=self._run, name=f"tpmetrics-flusher-{reporter.source}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush_now()

    def flush_now(self, final: bool = False) -> bool:
        """Build and send one snapshot; return whether the aggregator took it."""
        start = time.thread_time()
        try:
            return self._flush(final)
        finally:
            self.cpu_s += time.thread_time() - start

    def _flush(self, final: bool) -> bool:
        with self._send_lock:
            snapshot = self._reporter.snapshot(full=self._needs_full or final, final=final)
            try:
                reply = self._sink.send(snapshot)
            except Exception as error:
                self._reporter.mark_unsent(snapshot)
                self._needs_full = True
                self._sink.reset()
                self._log.warning(
                    "send",
                    "%s: snapshot %d not delivered, will resend: %s: %s",
                    self._reporter.source,
                    snapshot.seq,
                    type(error).__name__,
                    error,
                )
                return False
            self._handle_reply(snapshot, reply)
            return True

    def _handle_reply(self, snapshot: Snapshot, reply: ReportReply) -> None:
        if self._aggregator_id is not None and reply.aggregator_id != self._aggregator_id:
            logger.info(
                "%s: aggregator restarted (id %s), resending full state",
                self._reporter.source,
                reply.aggregator_id,
            )
            self._needs_full = True
        elif reply.needs_full_state:
            self._needs_full = True
        else:
            self._needs_full = self._needs_full and not snapshot.full
        self._aggregator_id = reply.aggregator_id
        for message in reply.rejected:
            self._log.warning(
                ("rejected", message), "%s: aggregator rejected: %s", self._reporter.source, message
            )

    def close(self, timeout_s: float) -> None:
        """Stop the thread, then send the final snapshot.

        Waits up to `timeout_s` seconds for a send in flight to finish, and
        the final send has the sink's own timeout on top, so the values
        recorded just before closing are not lost to a slow send.
        """
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            logger.warning(
                "%s: a snapshot send was still in flight after %.1f s; sending the final one next",
                self._reporter.source,
                timeout_s,
            )
        if self.flush_now(final=True):
            logger.info("%s: final snapshot sent", self._reporter.source)
