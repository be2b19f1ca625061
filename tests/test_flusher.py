"""The flusher's delivery rules, with a sink that records what it receives."""

from __future__ import annotations

import threading
import time

from tests.merge_support import engine
from tpmetrics.catalog import Catalog
from tpmetrics.snapshot import ReportReply, Snapshot
from tpmetrics.workers.reporter import Reporter


class SlowSink:
    """A sink whose first send takes `delay_s`; it keeps every snapshot it receives."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.received: list[Snapshot] = []
        self.first_send_started = threading.Event()

    def send(self, snapshot: Snapshot) -> ReportReply:
        if not self.received:
            self.first_send_started.set()
            time.sleep(self.delay_s)
        self.received.append(snapshot)
        return ReportReply("aggregator", accepted=len(snapshot.samples))

    def reset(self) -> None:
        pass


def test_close_sends_final_after_slow_send() -> None:
    sink = SlowSink(delay_s=0.5)
    reporter = Reporter(engine(0), Catalog(), sink, flush_interval_s=0.05)
    tokens = reporter.series("vllm:prompt_tokens")
    reporter.record(step=1, counters=[(tokens, 3)])
    assert sink.first_send_started.wait(timeout=5)
    reporter.record(step=2, counters=[(tokens, 4)])
    reporter.close(timeout_s=0.1)
    final = sink.received[-1]

    assert final.final is True
    assert [s.value for s in final.samples if s.family == "vllm:prompt_tokens"] == [7.0]


def test_failed_send_resends_full_state() -> None:
    class FailingOnce(SlowSink):
        def send(self, snapshot: Snapshot) -> ReportReply:
            if not self.received and not self.first_send_started.is_set():
                self.first_send_started.set()
                raise ConnectionError("aggregator unreachable")
            self.received.append(snapshot)
            return ReportReply("aggregator", accepted=len(snapshot.samples))

    sink = FailingOnce(delay_s=0)
    reporter = Reporter(engine(0), Catalog(), sink, flush_interval_s=60)
    tokens = reporter.series("vllm:prompt_tokens")
    reporter.record(step=1, counters=[(tokens, 5)])
    delivered_first = reporter.flush()
    delivered_second = reporter.flush()
    reporter.close(timeout_s=1)

    assert delivered_first is False
    assert delivered_second is True
    assert reporter.dropped_snapshots == 1
    assert sink.received[0].full is True
    assert [s.value for s in sink.received[0].samples if s.family == "vllm:prompt_tokens"] == [5.0]
