from __future__ import annotations

import gc
import weakref

from pipeline.serving.stats import ServingStats

NO_FAULTS = {"error": 0, "timeout": 0, "reset": 0, "malformed": 0, "truncated": 0,
             "empty_choices": 0, "fail_first": 0}


class Connection:
    """What the server passes for a connection: an object only (its transport)."""


def test_snapshot_counts_requests_statuses_routes_and_tokens() -> None:
    stats = ServingStats()
    connection = Connection()
    stats.request_started("invocations", connection)
    stats.serving_started()
    stats.request_started("responses", connection)  # the same connection
    stats.serving_started()
    stats.completed(prompt_tokens=5, completion_tokens=2)
    stats.serving_finished()
    stats.request_finished(200)
    stats.fault_injected("fail_first")
    stats.serving_finished()
    stats.request_finished(503)

    snapshot = stats.snapshot(distinct_requests=2, queued=0)
    first, last = snapshot.pop("first_request_at"), snapshot.pop("last_request_at")
    assert 0 < first <= last
    assert snapshot == {
        "requests_total": 2,
        "by_status": {"200": 1, "503": 1},
        "by_route": {"invocations": 1, "chat_completions": 0, "responses": 1},
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "tokens_served": 7,
        "faults_injected": 1,
        "faults_by_kind": {**NO_FAULTS, "fail_first": 1},
        "rate_limited": 0,
        "rejected_overload": 0,
        "connections": 1,
        "in_flight": 0,
        "peak_in_flight": 2,
        "queued": 0,
        "distinct_requests": 2,
        "per_second": [2],
        "limited_per_second": [],
    }


def test_faults_injected_is_the_total_of_every_kind() -> None:
    stats = ServingStats()
    for kind in ("error", "error", "reset", "truncated", "fail_first"):
        stats.fault_injected(kind)  # type: ignore[arg-type]

    snapshot = stats.snapshot(distinct_requests=0, queued=0)

    assert snapshot["faults_by_kind"] == {**NO_FAULTS, "error": 2, "reset": 1, "truncated": 1,
                                          "fail_first": 1}
    assert snapshot["faults_injected"] == 5


def test_refusals_are_counted_apart_and_never_in_flight() -> None:
    stats = ServingStats()
    for status in (429, 429, 503):
        stats.request_started("chat_completions")
        if status == 429:
            stats.limited()
        else:
            stats.overloaded()
        stats.request_finished(status)

    snapshot = stats.snapshot(distinct_requests=0, queued=3)

    assert (snapshot["rate_limited"], snapshot["rejected_overload"]) == (2, 1)
    assert (snapshot["peak_in_flight"], snapshot["faults_injected"]) == (0, 0)
    assert snapshot["by_status"] == {"429": 2, "503": 1}
    assert snapshot["queued"] == 3
    assert (snapshot["per_second"], snapshot["limited_per_second"]) == ([3], [2])


def test_reset_zeroes_counters_but_keeps_requests_in_flight() -> None:
    stats = ServingStats()
    stats.request_started("invocations")
    stats.serving_started()
    stats.request_started("invocations")
    stats.serving_started()
    stats.limited()
    stats.overloaded()
    stats.fault_injected("timeout")
    stats.serving_finished()
    stats.request_finished(200)

    stats.reset()

    snapshot = stats.snapshot(distinct_requests=0, queued=0)
    assert (snapshot["requests_total"], snapshot["by_status"]) == (0, {})
    assert (snapshot["rate_limited"], snapshot["rejected_overload"]) == (0, 0)
    assert (snapshot["faults_injected"], snapshot["faults_by_kind"]) == (0, NO_FAULTS)
    assert (snapshot["in_flight"], snapshot["peak_in_flight"]) == (1, 1)


def test_connections_are_counted_once_each_and_not_kept_once_closed() -> None:
    stats = ServingStats()
    first, second = Connection(), Connection()
    for index in range(5):
        stats.request_started("invocations", (first, second)[index % 2])
    gone = weakref.ref(first)
    del first
    gc.collect()
    stats.request_started("invocations", Connection())  # a third one, after the first closed

    assert stats.snapshot(distinct_requests=0, queued=0)["connections"] == 3
    assert gone() is None  # a closed connection is not held for the stats
