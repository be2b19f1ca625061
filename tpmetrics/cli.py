"""The `tpmetrics` command: `serve` a model with metrics, `replay` a trace against a server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence

from tpmetrics import __version__
from tpmetrics.catalog import parse_custom_buckets, validate_show_hidden_version
from tpmetrics.head.router import Routing
from tpmetrics.replay.cli import add_replay_arguments, run_replay

logger = logging.getLogger("tpmetrics.cli")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `tpmetrics serve` to `parser`."""
    add = parser.add_argument
    add(
        "--model",
        default="tiny-llama",
        help="a preset (tiny-llama, small-llama) or a Hugging Face checkpoint directory "
        "(default: tiny-llama)",
    )
    add(
        "--served-model-name",
        metavar="NAME",
        help="model name in the API and in every series' model_name label (default: --model)",
    )
    add(
        "--tensor-parallel-size",
        "-tp",
        type=int,
        default=1,
        metavar="N",
        help="TP worker actors per engine (default: 1)",
    )
    add(
        "--data-parallel-size",
        "-dp",
        type=int,
        default=1,
        metavar="M",
        help="engine replicas (default: 1)",
    )
    add("--host", default="127.0.0.1", help="address the HTTP server binds (default: 127.0.0.1)")
    add("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    add(
        "--max-num-seqs", type=int, default=64, help="requests an engine runs at once (default: 64)"
    )
    add(
        "--max-model-len",
        type=int,
        default=8192,
        help="context length in tokens, prompt plus output (default: 8192)",
    )
    add(
        "--max-num-batched-tokens",
        type=int,
        default=2048,
        help="token budget of one engine step; longer prefills are chunked (default: 2048)",
    )
    add(
        "--num-kv-blocks", type=int, default=4096, help="KV cache blocks per engine (default: 4096)"
    )
    add("--block-size", type=int, default=16, help="tokens per KV cache block (default: 16)")
    add(
        "--no-enable-prefix-caching",
        dest="enable_prefix_caching",
        action="store_false",
        help="turn prefix caching off",
    )
    add(
        "--routing",
        choices=[r.value for r in Routing],
        default=Routing.LEAST_LOADED.value,
        help="how requests are spread over engines (default: least-loaded)",
    )
    add(
        "--flush-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between two snapshots of each reporter (default: 1)",
    )
    add(
        "--show-hidden-metrics-for-version",
        metavar="X.Y",
        help="show the families hidden in this release that were deprecated in X.Y, "
        "the previous minor version",
    )
    add(
        "--custom-histogram-buckets",
        metavar="JSON",
        help="replace bucket families, e.g. '{\"time_to_first_token\": [0.1, 0.5, 1]}'",
    )
    add(
        "--disable-log-stats",
        action="store_true",
        help="do not report engine and TP worker stats (as vLLM's flag of that name); "
        "/metrics then shows only the aggregator's own families",
    )
    add(
        "--address",
        default="local",
        help="'local' starts an embedded Ray (default); 'auto' or HOST:PORT joins "
        "a running cluster",
    )
    add(
        "--seed",
        type=int,
        default=0,
        help="seed of the random weights of a preset model (default: 0)",
    )


def use_loopback_only() -> None:
    """Make an embedded Ray bind its node to 127.0.0.1 instead of the machine's routable address.

    Ray replaces a 127.0.0.1 node address with the routable one unless it
    runs in single-machine mode, which RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    selects on every platform (ray/_private/services.py,
    get_node_ip_address, Ray 2.60). It must be set before Ray is imported.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def run_serve(args: argparse.Namespace) -> int:
    """Start Ray or join it, then the aggregator, engines and HTTP server; stop all on Ctrl-C."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.address == "local":
        use_loopback_only()
    # Imported here so that `tpmetrics replay` and `--help` start fast without Ray and torch,
    # and after the environment above, which Ray reads at import.
    import ray  # noqa: PLC0415
    import uvicorn  # noqa: PLC0415

    from tpmetrics.head.deployment import Deployment, ServeConfig  # noqa: PLC0415

    try:
        validate_show_hidden_version(args.show_hidden_metrics_for_version)
        buckets = (
            parse_custom_buckets(args.custom_histogram_buckets)
            if args.custom_histogram_buckets
            else {}
        )
        config = ServeConfig(
            model=args.model,
            served_model_name=args.served_model_name,
            tensor_parallel_size=args.tensor_parallel_size,
            data_parallel_size=args.data_parallel_size,
            max_num_seqs=args.max_num_seqs,
            max_model_len=args.max_model_len,
            max_num_batched_tokens=args.max_num_batched_tokens,
            num_kv_blocks=args.num_kv_blocks,
            block_size=args.block_size,
            enable_prefix_caching=args.enable_prefix_caching,
            routing=Routing(args.routing),
            flush_interval_s=args.flush_interval,
            show_hidden_metrics_for_version=args.show_hidden_metrics_for_version,
            custom_histogram_buckets=buckets,
            seed=args.seed,
            report_metrics=not args.disable_log_stats,
        )
        config.catalog_config()
    except ValueError as error:
        print(f"tpmetrics serve: error: {error}", file=sys.stderr)
        return 2

    workers = config.tensor_parallel_size * config.data_parallel_size
    if args.address == "local":
        temp_dir = tempfile.mkdtemp(prefix="tpmetrics-ray-")
        ray.init(
            address="local",
            num_cpus=max(os.cpu_count() or 1, workers),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=temp_dir,
            log_to_driver=False,
        )
        where = f"embedded local Ray (logs in {temp_dir})"
    else:
        ray.init(address=args.address)
        where = f"Ray cluster at {args.address}"
    deployment = Deployment(config)
    try:
        app = deployment.start()
        base = f"http://{args.host}:{args.port}"
        print(
            f"tpmetrics {__version__}: serving {config.model_name!r} (model {config.model})\n"
            f"  Ray: {where}\n"
            f"  engines: {config.data_parallel_size} x TP {config.tensor_parallel_size} "
            f"({workers} TP worker actors), routing {config.routing.value}\n"
            f"  OpenAI API: {base}/v1   metrics: {base}/metrics   health: {base}/health\n"
            "  press Ctrl-C to stop",
            flush=True,
        )
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        print("tpmetrics: stopping engines and flushing metrics", flush=True)
        deployment.stop()
        ray.shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpmetrics", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tpmetrics {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve a model with the reference engine and vLLM-compatible /metrics"
    )
    add_serve_arguments(serve)
    serve.set_defaults(run=run_serve)
    replay = commands.add_parser(
        "replay", help="replay an Azure LLM inference trace against a server"
    )
    add_replay_arguments(replay)
    replay.set_defaults(run=run_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
