"""What the metrics path costs the reference engine: one replay with reporting on and off.

Runs `tpmetrics serve`'s deployment on an embedded local Ray, replays the
same slice of a trace against it with engine and TP worker reporting on,
then off, alternating, and prints both throughputs side by side. It also
queries each engine for the time its step loop and its TP ranks spent
recording metrics, and prints that share of the step time: a direct figure,
where the throughput ratio is only as precise as the run-to-run noise.

    python benchmarks/bench_engine_overhead.py --limit 40 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from tpmetrics.cli import use_loopback_only

# Ray reads both at import: no usage reports, and a node on 127.0.0.1.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
use_loopback_only()

import ray  # noqa: E402
import uvicorn  # noqa: E402

from tpmetrics.head.deployment import Deployment, ServeConfig  # noqa: E402
from tpmetrics.replay.client import ReplayOptions, replay_trace  # noqa: E402
from tpmetrics.replay.trace import read_trace  # noqa: E402
from tpmetrics.workers.step import StepTiming  # noqa: E402

DEFAULT_TRACE = (
    Path(__file__).resolve().parents[2] / "shared" / "traces" / "AzureLLMInferenceTrace_code.csv"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_once(args: argparse.Namespace, report: bool, round_index: int) -> tuple[float, float]:
    """Replay the slice once; return tokens per second and the share of step time spent recording.

    The share is the CPU time the engine's step thread and its slowest rank
    spent recording, over the engine's total step time. The engine waits for
    every rank, so a rank's recording time adds to the engine's step.
    """
    name = f"bench-{'on' if report else 'off'}-{round_index}"
    config = ServeConfig(
        served_model_name=name,
        tensor_parallel_size=args.tp,
        max_model_len=8192,
        num_kv_blocks=2048,
        report_metrics=report,
    )
    deployment = Deployment(config)
    app = deployment.start()

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"

    try:
        requests = read_trace(args.trace, limit=args.limit)
        options = ReplayOptions(
            url=url,
            model=name,
            speedup=args.speedup,
            max_concurrency=args.concurrency,
            show_progress=False,
        )
        result = asyncio.run(replay_trace(requests, options))
        failed = [r.error for r in result.results if not r.ok]
        if failed:
            raise RuntimeError(f"{len(failed)} requests failed, first: {failed[0]}")
        tokens = sum(r.prompt_tokens + r.output_tokens for r in requests)

        engine, ranks = ray.get(deployment.engines[0].step_timing.remote())
        print_timing(report, engine, ranks, result.duration_s)
        slowest = max(ranks, key=lambda r: r.record_s)
        share = (engine.record_s + slowest.record_s) / engine.step_s
        return tokens / result.duration_s, share
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        deployment.stop()


def print_timing(
    report: bool, engine: StepTiming, ranks: list[StepTiming], duration_s: float
) -> None:
    """Print where the engine's and its ranks' time went during one replay."""
    per_step = engine.step_s * 1e3 / engine.steps
    rank_record = ", ".join(f"{r.record_s * 1e6 / max(r.steps, 1):.1f} us" for r in ranks)
    rank_flush = ", ".join(f"{r.flush_s * 1e3:.1f} ms" for r in ranks)
    print(
        f"  reporting {'on' if report else 'off'}: {engine.steps} engine steps of "
        f"{per_step:.1f} ms; recording CPU per step: engine "
        f"{engine.record_s * 1e6 / engine.steps:.1f} us, ranks {rank_record}; "
        f"flusher CPU: engine {engine.flush_s * 1e3:.1f} ms, ranks {rank_flush} "
        f"over {duration_s:.1f} s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--limit", type=int, default=40, help="requests per replay (default: 40)")
    parser.add_argument("--tp", type=int, default=2, help="tensor-parallel size (default: 2)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="on/off pairs, alternating (default: 2)"
    )
    parser.add_argument("--speedup", type=float, default=100.0, help="trace speedup (default: 100)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="max requests in flight (default: 16)"
    )
    args = parser.parse_args(argv)

    ray.init(
        num_cpus=max(os.cpu_count() or 1, args.tp + 1),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=tempfile.mkdtemp(prefix="tpmetrics-bench-"),
        log_to_driver=False,
    )
    throughput: dict[bool, list[float]] = {True: [], False: []}
    shares: list[float] = []
    try:
        for round_index in range(args.rounds):
            for report in (True, False):
                tokens_per_s, share = run_once(args, report, round_index)
                throughput[report].append(tokens_per_s)
                if report:
                    shares.append(share)
                print(
                    f"round {round_index} reporting {'on ' if report else 'off'}: "
                    f"{tokens_per_s:,.0f} tokens/s",
                    flush=True,
                )
    finally:
        ray.shutdown()

    on, off = statistics.median(throughput[True]), statistics.median(throughput[False])
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    print(
        f"replay: first {args.limit} requests of {args.trace.name}, TP {args.tp}, "
        f"speedup {args.speedup}, concurrency {args.concurrency}"
    )
    print(f"{'reporting':<12}{'median tokens/s':>18}{'runs':>40}")
    print(f"{'on':<12}{on:>18,.0f}{[round(x) for x in throughput[True]]!s:>40}")
    print(f"{'off':<12}{off:>18,.0f}{[round(x) for x in throughput[False]]!s:>40}")
    print(f"throughput with reporting on / off: {on / off:.3f}")
    print(
        "share of engine step time spent recording metrics (reporting on): "
        + ", ".join(f"{share:.4%}" for share in shares)
    )


if __name__ == "__main__":
    main()
