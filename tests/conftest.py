"""Fixtures shared by the whole suite: one local Ray per test session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

# Set before any test module imports Ray, which reads both at import: no
# usage reports, and a node bound to 127.0.0.1 (see tpmetrics.cli.use_loopback_only).
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Start one local Ray for the test session, in a private temp dir, on 127.0.0.1."""
    import ray  # noqa: PLC0415

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
    node_ip = ray.util.get_node_ip_address()
    if node_ip != "127.0.0.1":
        ray.shutdown()
        raise RuntimeError(f"the test Ray node bound {node_ip}, expected 127.0.0.1")
    try:
        yield
    finally:
        ray.shutdown()
