"""The aggregator actor on real Ray, fed by reporters in worker actors, served over real HTTP."""

from __future__ import annotations

import gzip
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import prometheus, promtool_check_metrics, serve_app
from tests.support import wait_for
from tpmetrics.aggregator.actor import start_aggregator
from tpmetrics.head.app import create_app
from tpmetrics.snapshot import SourceId, SourceKind
from tpmetrics.workers.reporter import connect_reporter

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

NAMESPACE = "tpmetrics-tests"
MODEL = "llama-e2e"


@ray.remote(num_cpus=0)
class StepWorker:
    """A TP worker stand-in that records engine steps through a real reporter."""

    def __init__(self, source: SourceId, aggregator: str) -> None:
        self.reporter = connect_reporter(
            source, flush_interval_s=0.2, aggregator=aggregator, namespace=NAMESPACE
        )
        self.iteration = self.reporter.series("vllm:iteration_tokens_total")
        self.prompt = self.reporter.series("vllm:prompt_tokens")
        self.steps = self.reporter.series("tpmetrics:rank_steps")

    def run_steps(self, steps: int, tokens: int) -> None:
        for step in range(1, steps + 1):
            self.reporter.record(
                step=step,
                observations=[(self.iteration, tokens)],
                counters=[(self.prompt, tokens), (self.steps, 1)],
            )

    def close(self) -> None:
        self.reporter.close()


@pytest.fixture
def aggregator() -> Iterator[tuple[str, ray.actor.ActorHandle]]:
    name = f"aggregator-{uuid.uuid4().hex[:8]}"
    handle = start_aggregator(name=name, namespace=NAMESPACE)
    yield name, handle
    ray.kill(handle, no_restart=True)


@pytest.fixture
def head_url(aggregator: tuple[str, ray.actor.ActorHandle]) -> Iterator[str]:
    with serve_app(create_app(aggregator[1])) as url:
        yield url


def start_workers(
    aggregator: str, engines: int, tp: int, model: str = MODEL
) -> list[ray.actor.ActorHandle]:
    return [
        StepWorker.remote(SourceId(SourceKind.RANK, model, engine=e, rank=r), aggregator)
        for e in range(engines)
        for r in range(tp)
    ]


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_plain_route_no_redirect(head_url: str) -> None:
    response = httpx.get(f"{head_url}/metrics", follow_redirects=False)

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_metrics_openmetrics_when_accepted(head_url: str) -> None:
    response = httpx.get(
        f"{head_url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_metrics_gzip_when_asked(head_url: str) -> None:
    response = httpx.get(f"{head_url}/metrics", headers={"Accept-Encoding": "gzip"})
    plain = httpx.get(f"{head_url}/metrics", headers={"Accept-Encoding": "identity"})

    assert response.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert b"tpmetrics_snapshots_accepted" in gzip.compress(plain.content) or plain.content


def test_metrics_name_filter(head_url: str, aggregator: tuple[str, ray.actor.ActorHandle]) -> None:
    workers = start_workers(aggregator[0], engines=1, tp=1)
    ray.get([w.run_steps.remote(2, 10) for w in workers])
    ray.get([w.close.remote() for w in workers])
    response = httpx.get(
        f"{head_url}/metrics",
        params=[
            ("name[]", "vllm:prompt_tokens_total"),
            ("name[]", "vllm:iteration_tokens_total_count"),
        ],
    )
    names = {name for name, _ in parse(response.text)}

    assert names == {"vllm:prompt_tokens_total", "vllm:iteration_tokens_total_count"}


def test_health_reports_aggregator(
    head_url: str, aggregator: tuple[str, ray.actor.ActorHandle]
) -> None:
    response = httpx.get(f"{head_url}/health")

    assert response.status_code == 200
    assert response.json()["aggregator_id"] == ray.get(aggregator[1].aggregator_id.remote())


def test_metrics_503_when_aggregator_gone(
    head_url: str, aggregator: tuple[str, ray.actor.ActorHandle]
) -> None:
    ray.kill(aggregator[1], no_restart=True)
    response = httpx.get(f"{head_url}/metrics", timeout=30)

    assert response.status_code == 503
    assert response.text.startswith("aggregator unavailable")


@pytest.mark.prometheus
def test_prometheus_scrapes_merged_families(
    head_url: str, aggregator: tuple[str, ray.actor.ActorHandle]
) -> None:
    workers = start_workers(aggregator[0], engines=2, tp=2)
    ray.get([w.run_steps.remote(5, 100) for w in workers])
    ray.get([w.close.remote() for w in workers])
    target = head_url.removeprefix("http://")
    with prometheus(target) as server:
        quantile = server.wait_for_value(
            "histogram_quantile(0.5, sum by (le) (vllm:iteration_tokens_total_bucket))", 96.0
        )
        total = server.wait_for_value(
            f'sum(vllm:prompt_tokens_total{{model_name="{MODEL}"}})', 1000.0
        )
        steps = server.wait_for_value("sum(tpmetrics:rank_steps_total)", 20.0)

    assert quantile == 96.0
    assert total == 1000.0
    assert steps == 20.0


@pytest.mark.prometheus
def test_model_name_escaping_passes_promtool(
    head_url: str, aggregator: tuple[str, ray.actor.ActorHandle]
) -> None:
    model = 'llama "7b" \\ prod\nzwei-größe-模型'
    workers = start_workers(aggregator[0], engines=1, tp=2, model=model)
    ray.get([w.run_steps.remote(3, 8) for w in workers])
    ray.get([w.close.remote() for w in workers])
    body = httpx.get(f"{head_url}/metrics").content
    check = promtool_check_metrics(body)
    # vLLM's own names draw two lint warnings: colons in names, and a histogram
    # (vllm:iteration_tokens_total) whose name ends in _total. Anything else fails.
    known = ("should not contain ':'", "vllm:iteration_tokens_total non-counter metrics")
    errors = [
        line
        for line in (check.stdout + check.stderr).splitlines()
        if line.strip() and not any(k in line for k in known)
    ]
    samples = parse(body.decode())

    assert errors == []
    assert (
        samples[("vllm:prompt_tokens_total", frozenset({("model_name", model), ("engine", "0")}))]
        == 24
    )


def test_reporter_resends_after_aggregator_restart(
    head_url: str, aggregator: tuple[str, ray.actor.ActorHandle]
) -> None:
    name, handle = aggregator
    workers = start_workers(name, engines=1, tp=1)
    ray.get(workers[0].run_steps.remote(4, 5))
    key = ("vllm:prompt_tokens_total", frozenset({("model_name", MODEL), ("engine", "0")}))

    def merged() -> float | None:
        return parse(httpx.get(f"{head_url}/metrics", timeout=30).text).get(key)

    wait_for(lambda: merged() == 20, timeout_s=20, what="first flush")
    first_id = ray.get(handle.aggregator_id.remote())
    ray.kill(handle, no_restart=False)

    def restarted() -> bool:
        try:
            return bool(ray.get(handle.aggregator_id.remote(), timeout=5) != first_id)
        except ray.exceptions.RayError:
            return False

    wait_for(restarted, timeout_s=60, what="aggregator restart")
    wait_for(lambda: merged() == 20, timeout_s=20, what="full resend after restart")
    ray.get(workers[0].close.remote())

    assert merged() == 20


def test_reporter_never_blocks_without_aggregator(
    aggregator: tuple[str, ray.actor.ActorHandle],
) -> None:
    name, handle = aggregator
    reporter = connect_reporter(
        SourceId(SourceKind.ENGINE, MODEL, engine=3),
        flush_interval_s=60,
        aggregator=name,
        namespace=NAMESPACE,
    )
    tokens = reporter.series("vllm:prompt_tokens")
    ray.kill(handle, no_restart=True)
    delivered = reporter.flush()
    start = time.perf_counter()
    for _ in range(1000):
        reporter.record(step=1, counters=[(tokens, 1)])
    elapsed = time.perf_counter() - start
    reporter.close(timeout_s=2)

    assert delivered is False
    assert reporter.dropped_snapshots >= 1
    assert elapsed < 0.5
