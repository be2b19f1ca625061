"""Fixtures shared by the whole suite: one local Ray per test session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Start one local Ray for the test session, in a private temp dir."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray  # noqa: PLC0415  (after RAY_USAGE_STATS_ENABLED is set)

    temp_dir = tempfile.mkdtemp(prefix="tpmetrics-ray-")
    ray.init(
        num_cpus=8,
        _node_ip_address="127.0.0.1",
        _temp_dir=temp_dir,
        include_dashboard=False,
        namespace="tpmetrics-tests",
        log_to_driver=False,
        runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}},
    )
    try:
        yield
    finally:
        ray.shutdown()
