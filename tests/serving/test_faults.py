from __future__ import annotations

from pipeline.serving.faults import Fault, FaultPlan
from pipeline.serving.settings import ServingSettings

FAIL_TWICE = ServingSettings(fail_first=2)


def outcomes(plan: FaultPlan, key: str, attempts: int, settings: ServingSettings) -> list[bool]:
    """True for each attempt that got a fault."""
    return [plan.decide(key, settings) is not None for _ in range(attempts)]


def test_each_distinct_request_fails_exactly_fail_first_times() -> None:
    plan = FaultPlan()

    assert outcomes(plan, "a", 4, FAIL_TWICE) == [True, True, False, False]
    assert outcomes(plan, "b", 3, FAIL_TWICE) == [True, True, False]
    assert plan.distinct_keys == 2


def test_interleaved_requests_keep_separate_counts() -> None:
    plan = FaultPlan()

    got = [plan.decide(key, FAIL_TWICE) is not None for key in ["a", "b", "a", "b", "a", "b"]]

    assert got == [True, True, True, True, False, False]


def test_fault_carries_status_code_and_retry_after() -> None:
    settings = ServingSettings(fail_first=1, fail_status=429, retry_after_s=0.25)

    fault = FaultPlan().decide("a", settings)

    assert fault == Fault(
        status=429,
        error_code="REQUEST_LIMIT_EXCEEDED",
        message="injected fault: attempt 1 of 1 failing",
        retry_after_s=0.25,
    )


def test_no_faults_by_default_but_requests_are_still_remembered() -> None:
    plan = FaultPlan()

    assert outcomes(plan, "a", 2, ServingSettings()) == [False, False]
    assert plan.distinct_keys == 1


def test_reset_forgets_every_request() -> None:
    plan = FaultPlan()
    outcomes(plan, "a", 2, FAIL_TWICE)

    plan.reset()

    assert plan.distinct_keys == 0
    assert outcomes(plan, "a", 1, FAIL_TWICE) == [True]
