"""The latency model (latency.py) and the delays the real server applies."""

from __future__ import annotations

import time

import pytest

from pipeline.serving.latency import LatencyModel
from pipeline.serving.process import LocalEndpoint
from pipeline.serving.settings import ServingSettings

from .conftest import ENDPOINT
from .wire_client import post

JITTERY = ServingSettings(latency_jitter_s=0.5)


def delays(model: LatencyModel, settings: ServingSettings, n: int) -> list[float]:
    return [model.delay_s(settings, completion_tokens=4) for _ in range(n)]


def test_fixed_plus_per_token_without_jitter() -> None:
    settings = ServingSettings(latency_s=0.25, latency_per_token_s=0.5)

    assert LatencyModel(seed=0).delay_s(settings, completion_tokens=3) == pytest.approx(1.75)


def test_jitter_stays_within_its_bound_and_varies() -> None:
    settings = ServingSettings(latency_s=1.0, latency_jitter_s=0.5)

    got = delays(LatencyModel(seed=0), settings, 1000)

    assert all(1.0 <= d <= 1.5 for d in got)
    assert max(got) - min(got) > 0.45  # spread over the whole range, not a constant


def test_the_same_seed_gives_the_same_delays() -> None:
    assert delays(LatencyModel(seed=3), JITTERY, 20) == delays(LatencyModel(seed=3), JITTERY, 20)
    assert delays(LatencyModel(seed=3), JITTERY, 20) != delays(LatencyModel(seed=4), JITTERY, 20)


def test_reseed_restarts_the_sequence() -> None:
    model = LatencyModel(seed=3)
    first = delays(model, JITTERY, 5)

    model.reseed(3)

    assert delays(model, JITTERY, 5) == first


def test_nothing_is_drawn_without_jitter() -> None:
    model = LatencyModel(seed=3)
    delays(model, ServingSettings(latency_s=0.1), 5)

    assert delays(model, JITTERY, 5) == delays(LatencyModel(seed=3), JITTERY, 5)


def test_the_server_holds_each_completion_for_its_seeded_delay(endpoint: LocalEndpoint) -> None:
    endpoint.control(latency_jitter_s=0.3, seed=7)
    expected = delays(LatencyModel(seed=7), ServingSettings(latency_jitter_s=0.3), 3)
    assert max(expected) - min(expected) > 0.05  # the seed gives visibly different delays

    took = []
    for i in range(3):
        started = time.monotonic()
        assert post(f"{endpoint.base_url}/{ENDPOINT}/invocations",
                    {"messages": [{"role": "user", "content": f"r{i}"}]}).status == 200
        took.append(time.monotonic() - started)

    for spent, delay in zip(took, expected, strict=True):
        # Never shorter than its draw (timer granularity aside); loose above for a busy machine.
        assert delay - 0.01 <= spent < delay + 2.0
