from __future__ import annotations

from pipeline.serving.stats import ServingStats


def test_snapshot_counts_requests_statuses_routes_and_tokens() -> None:
    stats = ServingStats()
    stats.request_started("invocations")
    stats.request_started("responses")
    stats.completed(prompt_tokens=5, completion_tokens=2)
    stats.request_finished(200)
    stats.fault_injected()
    stats.request_finished(503)

    assert stats.snapshot(distinct_requests=2) == {
        "requests_total": 2,
        "by_status": {"200": 1, "503": 1},
        "by_route": {"invocations": 1, "chat_completions": 0, "responses": 1},
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "faults_injected": 1,
        "in_flight": 0,
        "peak_in_flight": 2,
        "distinct_requests": 2,
    }


def test_reset_zeroes_counters_but_keeps_requests_in_flight() -> None:
    stats = ServingStats()
    stats.request_started("invocations")
    stats.request_started("invocations")
    stats.request_finished(200)

    stats.reset()

    snapshot = stats.snapshot(distinct_requests=0)
    assert (snapshot["requests_total"], snapshot["by_status"]) == (0, {})
    assert (snapshot["in_flight"], snapshot["peak_in_flight"]) == (1, 1)
