"""Real servers for integration tests: the head app under uvicorn, and Prometheus."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from tests.support import free_port, wait_for


@contextmanager
def serve_app(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in a thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout_s=20, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: tpmetrics
    metrics_path: /metrics
    static_configs:
      - targets: ["{target}"]
"""


class Prometheus:
    """A real Prometheus server on 127.0.0.1, scraping one target every second."""

    def __init__(self, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="tpmetrics-prometheus-")
        config = Path(self._dir.name) / "prometheus.yml"
        config.write_text(PROMETHEUS_CONFIG.format(target=target))
        self._log = open(Path(self._dir.name) / "prometheus.log", "wb")  # noqa: SIM115
        self._process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={self._dir.name}/data",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result

    def wait_for_value(self, promql: str, expected: float, timeout_s: float = 60.0) -> float:
        """Poll `promql` until it returns one sample equal to `expected`; return the last value."""
        last: list[float] = []

        def matches() -> bool:
            try:
                result = self.query(promql)
            except httpx.HTTPError:
                return False
            last[:] = [float(r["value"][1]) for r in result]
            return last == [expected]

        try:
            wait_for(matches, timeout_s=timeout_s, what=f"{promql} == {expected}")
        except AssertionError:
            raise AssertionError(f"{promql}: expected [{expected}], got {last}") from None
        return last[0]

    def log(self) -> str:
        self._log.flush()
        return (Path(self._dir.name) / "prometheus.log").read_text(errors="replace")

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()
        self._dir.cleanup()


@contextmanager
def prometheus(target: str) -> Iterator[Prometheus]:
    if not any(
        os.access(Path(d) / "prometheus", os.X_OK) for d in os.environ["PATH"].split(os.pathsep)
    ):
        raise AssertionError("prometheus is not installed: run `apt-get install prometheus`")
    server = Prometheus(target)
    try:
        wait_for(lambda: _ready(server.url), timeout_s=60, what="prometheus to be ready")
        yield server
    finally:
        server.stop()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        time.sleep(0.2)
        return False


def promtool_check_metrics(body: bytes) -> subprocess.CompletedProcess[str]:
    """Run `promtool check metrics` on an exposition body."""
    return subprocess.run(
        ["promtool", "check", "metrics"],
        input=body.decode(),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
