"""Engine choice for each request: round-robin and least-loaded."""

from __future__ import annotations

import pytest

from tpmetrics.head.router import EngineRouter, Routing


def test_round_robin_cycles_engines() -> None:
    router = EngineRouter(["a", "b", "c"], Routing.ROUND_ROBIN)

    assert [router.pick() for _ in range(5)] == [0, 1, 2, 0, 1]


def test_least_loaded_picks_fewest_in_flight() -> None:
    router = EngineRouter(["a", "b"], Routing.LEAST_LOADED)
    with router.track(0) as engine:
        picked = router.pick()

    assert engine == "a"
    assert picked == 1
    assert router.in_flight == [0, 0]


def test_router_needs_an_engine() -> None:
    with pytest.raises(ValueError, match="at least one engine"):
        EngineRouter([])
