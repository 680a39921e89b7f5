"""The job-wide budget and its adaptive rate, driven by an injected clock (no sleeping)."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from pipeline.control.budget import (
    ADAPT_PERIOD_S,
    BACKOFF,
    CAP_PATIENCE,
    CAP_PROBE,
    CONFIGURED_BACKOFF,
    DECREASE_COOLDOWN_S,
    INCREASE,
    LEASE_SECONDS,
    MARGIN,
    MAX_PROBE,
    PATIENCE,
    RECOUNT_AFTER_S,
    TOKEN_CAP,
    YOUNGER_LEASE_SECONDS,
    YOUNGER_POLL_S,
    JobBudget,
    Schedule,
)
from pipeline.control.protocol import LeaseAsk, LeaseGrant
from tests.clock import FakeClock

START = 100.0


def drain(budget: JobBudget, clock: FakeClock, seconds: float, tasks: int, step: float = 0.01,
          times: list[float] | None = None, answered: bool = False,
          **seen: int) -> list[int]:  # fmt: skip
    """Every task asks for 8 permits every `step` for `seconds`, in turns (who asks first
    rotates, as arrival order does); permits granted per task. `times` collects when each
    granted permit falls due. `answered`: each ask tells the permits of the task's ask before
    as successes."""
    granted = [0] * tasks
    last = [0] * tasks
    end, turn = clock.now + seconds, 0
    while clock.now < end:
        for i in range(tasks):
            task = (turn + i) % tasks
            told = {"ok": last[task]} if answered else {}
            grant = budget.lease(LeaseAsk(requests=8, task=f"task-{task}", **told, **seen))
            granted[task] += grant.requests
            last[task] = grant.requests
            if times is not None:
                times.extend(due_times(grant, clock.now))
        clock.now += step
        turn += 1
    return granted


def due_times(grant: LeaseGrant, now: float) -> list[float]:
    return [now + grant.start_s + k * grant.interval_s for k in range(grant.requests)]


def busiest_window(times: list[float], window_s: float = 1.0) -> int:
    """The most permits due in any window of `window_s` (open at its end)."""
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_a_schedule_never_piles_up_what_nobody_asked_for() -> None:
    clock = FakeClock(START)
    schedule = Schedule(10.0, clock)
    assert schedule.due() == START  # the first unit may go now: no burst, no wait
    schedule.book(START, 5)
    assert schedule.due() == pytest.approx(START + 0.5)
    clock.now += 60  # a long idle spell gives nothing extra
    assert schedule.due() == clock.now
    schedule.book(clock.now, 1)
    schedule.give_back(10)  # unused units come back, never into the past
    assert schedule.due() == clock.now


def test_a_faster_rate_shortens_the_wait_booked_at_the_slower_one() -> None:
    """A unit booked at 0.1/s would hold the next one 10 s whatever rate came after."""
    clock = FakeClock(START)
    schedule = Schedule(0.1, clock)
    schedule.book(START, 1)
    clock.now += 0.25
    schedule.set_rate(50.0)
    assert schedule.due() == pytest.approx(START + 0.25 + 9.75 * 0.1 / 50)
    schedule.set_rate(5.0)  # a slower one keeps what was booked
    assert schedule.due() == pytest.approx(START + 0.25 + 9.75 * 0.1 / 50)


def test_job_rate_holds_whatever_the_number_of_tasks() -> None:
    for tasks in (1, 2, 7):
        clock = FakeClock(START)
        budget = JobBudget(600, None, adaptive=False, clock=clock)
        times: list[float] = []
        granted = sum(drain(budget, clock, 30.0, tasks, times=times))
        rate = 10 * MARGIN
        assert 0.99 * rate * 30 <= granted <= rate * 30 + 1  # no permit lost, none above it
        assert busiest_window(times) <= 10  # no window sees more than the configured rate


def test_the_oldest_task_is_served_first_and_the_next_takes_over_at_once() -> None:
    clock = FakeClock(START)
    budget = JobBudget(1200, None, adaptive=False, clock=clock)
    budget.lease(LeaseAsk(requests=1, task="task-0"))
    clock.now += 0.001
    together = drain(budget, clock, 10.0, tasks=2)
    assert together[0] > 3 * together[1]  # the oldest gets what it asks for
    assert sum(together) >= 0.99 * 20 * MARGIN * 10
    assert budget.lease(LeaseAsk(requests=8, task="task-1")).requests == 0  # booked ahead
    budget.lease(LeaseAsk(requests=0, task="task-0"))  # it ended: its last ask says so
    assert budget.lease(LeaseAsk(requests=8, task="task-1")).requests == 1  # at once


def test_a_younger_task_soon_takes_what_the_oldest_gave_back() -> None:
    clock = FakeClock(START)
    budget = JobBudget(12_000, None, adaptive=False, clock=clock)  # 200/s: 10 per lease
    held = budget.lease(LeaseAsk(requests=64, task="task-0")).requests
    clock.now += 0.001
    refused = budget.lease(LeaseAsk(requests=64, task="task-1"))
    assert refused.requests == 0  # booked ahead by the oldest, yet asked again soon ...
    assert refused.wait_s <= YOUNGER_POLL_S < LEASE_SECONDS - YOUNGER_LEASE_SECONDS
    # ... for the oldest's input ended: it sent one of its permits and gave the rest back.
    budget.lease(LeaseAsk(requests=0, returned=held - 1, task="task-0"))
    clock.now += refused.wait_s
    taken = budget.lease(LeaseAsk(requests=64, task="task-1"))
    assert taken.requests > 1 and taken.start_s == 0.0  # due now: no gap in the rate


def test_younger_tasks_together_ask_about_as_often_as_one() -> None:
    clock = FakeClock(START)
    budget = JobBudget(600, None, adaptive=False, clock=clock)  # 10/s: the oldest books 1
    for task in range(5):
        budget.lease(LeaseAsk(requests=8, task=f"task-{task}"))
    refused = budget.lease(LeaseAsk(requests=8, task="task-4"))
    assert refused.requests == 0
    assert refused.wait_s == pytest.approx(4 * YOUNGER_POLL_S)  # four younger tasks
    clock.now += 0.095  # the next permit is due in 0.005 s: waiting less than the poll
    assert budget.lease(LeaseAsk(requests=8, task="task-4")).wait_s < 4 * YOUNGER_POLL_S


def test_a_task_that_ended_keeps_its_place_for_a_retry() -> None:
    # Its input ended and it gave its permits back, then a 429 left it one retry: it is served
    # as the oldest again (its Spark task ends, and its slot starts the next task), not after
    # the task that took over.
    clock = FakeClock(START)
    budget = JobBudget(12_000, None, adaptive=False, clock=clock)  # 200/s: 10 per lease
    held = budget.lease(LeaseAsk(requests=8, task="task-0")).requests
    clock.now += 0.001
    budget.lease(LeaseAsk(requests=0, returned=held, task="task-0"))  # ended
    assert budget.lease(LeaseAsk(requests=64, task="task-1")).requests > 2  # oldest now
    clock.now += 0.001
    retry = budget.lease(LeaseAsk(requests=1, task="task-0"))
    assert retry.requests == 1
    assert budget.lease(LeaseAsk(requests=8, task="task-1")).requests == 0  # younger again


def test_leases_are_small_slices_of_the_rate() -> None:
    clock = FakeClock(START)
    budget = JobBudget(60_000, None, adaptive=False, clock=clock)
    clock.now += 10
    lease = budget.lease(LeaseAsk(requests=10_000))
    assert 0 < lease.requests <= 1000 * LEASE_SECONDS + 1  # never the backlog
    assert lease.interval_s == pytest.approx(1 / (1000 * MARGIN))


def test_nothing_granted_says_how_long_to_wait() -> None:
    clock = FakeClock(START)
    budget = JobBudget(60, None, adaptive=False, clock=clock)
    first = budget.lease(LeaseAsk(requests=5))
    assert (first.requests, first.start_s) == (1, 0.0)  # one a second: one due now
    refused = budget.lease(LeaseAsk(requests=1))
    assert refused.requests == 0
    assert refused.wait_s == pytest.approx(1 / MARGIN - LEASE_SECONDS)


def test_permits_given_back_go_to_other_tasks() -> None:
    clock = FakeClock(START)
    budget = JobBudget(60 * 100, None, adaptive=False, clock=clock)
    held = budget.lease(LeaseAsk(requests=100, task="a")).requests
    assert budget.lease(LeaseAsk(requests=100, task="b")).requests == 0
    budget.lease(LeaseAsk(requests=0, returned=held, task="a"))
    assert budget.lease(LeaseAsk(requests=100, task="b")).requests == held


def test_token_budget_is_booked_then_corrected() -> None:
    clock = FakeClock(START)
    budget = JobBudget(None, 60_000 / MARGIN, adaptive=False, clock=clock)
    first = budget.lease(LeaseAsk(requests=100, tokens=2000))  # 1000 tokens/s: 20 each
    assert (first.requests, first.tokens) == (3, 60)  # due within 50 ms: at 0, 20 and 40 ms
    assert first.interval_s == pytest.approx(0.02)
    assert budget.lease(LeaseAsk(requests=1, tokens=20)).requests == 0
    # Those requests used 2 tokens each, not 20: the 54 come back, and the next permit is due
    # when the 6 used are spent.
    again = budget.lease(LeaseAsk(requests=100, tokens=2000, token_correction=-54))
    assert again.requests == 3 and again.start_s == pytest.approx(0.006)


def test_adaptive_starts_with_no_rate_and_backs_off_below_the_rate_answers_came_at() -> None:
    clock = FakeClock(START)
    budget = JobBudget(None, None, adaptive=True, clock=clock)
    assert budget.rate_per_s is None
    unpaced = budget.lease(LeaseAsk(requests=64))  # the concurrency is the bound
    assert unpaced.requests >= 64 and (unpaced.start_s, unpaced.interval_s) == (0, 0)
    clock.now += 0.2
    budget.lease(LeaseAsk(requests=64, ok=150))
    budget.lease(LeaseAsk(requests=64, ok=0, rate_limited=5))
    assert budget.rate_per_s == pytest.approx(155 * BACKOFF)  # answers over the last second
    budget.lease(LeaseAsk(requests=1, rate_limited=3))  # the same burst of 429s: once
    assert budget.rate_per_s == pytest.approx(155 * BACKOFF)


def test_a_first_decrease_on_thin_evidence_is_counted_again_once_every_task_has_told() -> None:
    """The endpoint lets 100 through in its first one-second window; the first report of a 429
    holds one task's 40 of them, the other task tells its 60 later, and what is sent at the new
    rate meets the full window: RECOUNT_AFTER_S on, the rate is 100 (less the margin)."""
    clock = FakeClock(START)
    budget = JobBudget(None, None, adaptive=True, clock=clock)
    budget.lease(LeaseAsk(requests=64, task="a"))
    clock.now += 0.1
    budget.lease(LeaseAsk(requests=64, task="a", ok=40, rate_limited=5))
    first = budget.rate_per_s
    assert first is not None and first < 45  # judged on what task a told
    clock.now += 0.05
    budget.lease(LeaseAsk(requests=64, task="b", ok=60, rate_limited=30))
    assert budget.rate_per_s == first  # the same burst of 429s: no second judgement yet
    while clock.now < START + 0.1 + RECOUNT_AFTER_S * 0.9:  # 429s at the new rate
        clock.now += 0.05
        budget.lease(LeaseAsk(requests=8, task="a", rate_limited=round(first * 0.05)))
    assert budget.rate_per_s == first
    clock.now += 0.05
    budget.lease(LeaseAsk(requests=8, task="a"))
    assert budget.rate_per_s == pytest.approx(100, rel=0.1)
    for _ in range(int(3 / 0.05)):  # the same count later changes nothing
        clock.now += 0.05
        budget.lease(LeaseAsk(requests=8, task="a"))
    assert budget.rate_per_s == pytest.approx(100, rel=0.1)


def test_a_first_decrease_that_was_right_is_left_as_it_is() -> None:
    """Every success was told with the first 429s: counting again changes nothing, and the
    quiet period searches back towards the 120/s answers came at, as after any decrease."""
    clock = FakeClock(START)
    budget = JobBudget(None, None, adaptive=True, clock=clock)
    budget.lease(LeaseAsk(requests=64, task="a"))
    clock.now += 0.1
    budget.lease(LeaseAsk(requests=64, task="a", ok=100, rate_limited=20))
    assert budget.rate_per_s == pytest.approx(100)  # what the endpoint admitted
    while clock.now < START + 0.1 + ADAPT_PERIOD_S * 1.5:
        clock.now += 0.05
        budget.lease(LeaseAsk(requests=8, task="a", ok=5))  # 100/s, every report in
    assert budget.rate_per_s == pytest.approx(110)  # half way back to 120/s


def test_later_429s_back_off_on_evidence_at_most_half_and_quiet_periods_search_back() -> None:
    clock = FakeClock(START)
    budget = JobBudget(None, None, adaptive=True, clock=clock)
    budget.lease(LeaseAsk(requests=8, ok=100, rate_limited=30))
    assert budget.rate_per_s == pytest.approx(100)  # what the endpoint admitted
    clock.now += DECREASE_COOLDOWN_S + 0.01
    budget.lease(LeaseAsk(requests=8, ok=120, rate_limited=1))  # admitted 60/s of 100/s
    assert budget.rate_per_s == pytest.approx(60)
    too_fast = 60
    clock.now += DECREASE_COOLDOWN_S + 0.01
    budget.lease(LeaseAsk(requests=8, ok=30, rate_limited=5))  # admitted 15/s: half off, no more
    assert budget.rate_per_s == pytest.approx(too_fast / 2)
    budget.lease(LeaseAsk(requests=1, rate_limited=3))  # the same burst of 429s: once
    assert budget.rate_per_s == pytest.approx(too_fast / 2)
    # the period that saw 429s: no growth
    drain(budget, clock, ADAPT_PERIOD_S * 1.01, tasks=2, answered=True)
    assert budget.rate_per_s == pytest.approx(too_fast / 2)
    for expected in (0.75, 0.875, 0.9375):  # quiet periods halve the distance to 60/s
        drain(budget, clock, ADAPT_PERIOD_S * 1.01, tasks=2, answered=True)
        assert budget.rate_per_s == pytest.approx(too_fast * expected)


@pytest.mark.parametrize("configured", [None, 6000])
def test_429s_that_slowing_down_does_not_lessen_do_not_slow_it_down(
    configured: int | None,
) -> None:
    """An endpoint that answers 7 % of requests 429 whatever the rate: one decrease, then back
    to the rate before it, for good."""
    clock = FakeClock(START)
    budget = JobBudget(configured, None, adaptive=True, clock=clock)
    before = budget.rate_per_s
    rates = []
    for _ in range(40):  # 20 s: 93 answers and 7 429s every half second
        budget.lease(LeaseAsk(requests=8, ok=93, rate_limited=7))
        rates.append(budget.rate_per_s)
        clock.now += 0.5
    assert rates[0] != before  # the first 429s: slowed down
    assert rates[-1] == before and set(rates[8:]) == {before}


def test_429s_whatever_the_rate_are_found_at_a_low_rate_too() -> None:
    """20 answers a second, 7.5 % of them 429s at random: a second with none comes by chance
    one time in five, and must not count as proof that a decrease was right. Chance stretches
    still draw a third decrease in about a third of the draws (as before the judgement counted
    binomially); never more than a few."""
    found = 0
    for seed in range(20):
        clock = FakeClock(START)
        budget = JobBudget(None, None, adaptive=True, clock=clock)
        draw = random.Random(seed)
        rates = []
        for _ in range(1200):  # 60 s, an answer every 50 ms
            limited = int(draw.random() < 0.075)
            budget.lease(LeaseAsk(requests=8, ok=1 - limited, rate_limited=limited))
            rates.append(budget.rate_per_s)
            clock.now += 0.05
        assert rates[0] is None and any(rate is not None for rate in rates)  # slowed down
        decreases = [now for now, (a, b) in enumerate(pairwise(rates)) if b is not None and (
            a is None or b < a)]  # fmt: skip
        assert len(decreases) <= 5  # ... and found out, whatever the chance periods
        found += len(decreases) <= 2
    assert found >= 12


def answers_of_a_limited_endpoint(limit: float, seconds: float) -> tuple[int, int]:
    """A job sending at the budget's rate to an endpoint that admits `limit` a second and
    answers the rest 429, told every 50 ms, after a first burst (60 of 100 admitted): the
    successes and 429s of the second half."""
    step = 0.05
    clock = FakeClock(START)
    budget = JobBudget(None, None, adaptive=True, clock=clock)
    budget.lease(LeaseAsk(requests=8, ok=60, rate_limited=40))
    owed, late = [0.0, 0.0], [0, 0]
    for k in range(int(seconds / step)):
        clock.now += step
        rate = budget.rate_per_s
        assert rate is not None
        refused = max(0.0, (rate - limit) / rate)
        owed[0] += rate * step * (1 - refused)
        owed[1] += rate * step * refused
        ok, limited = int(owed[0]), int(owed[1])
        owed[0] -= ok
        owed[1] -= limited
        budget.lease(LeaseAsk(requests=max(8, int(2 * rate * step)), ok=ok, rate_limited=limited))
        if k * step >= seconds / 2:
            late[0] += ok
            late[1] += limited
    return late[0], late[1]


@pytest.mark.parametrize("limit", [10.0, 50.0, 100.0, 500.0])
def test_a_limit_found_from_429s_alone_is_kept_under(limit: float) -> None:
    """Each decrease is judged at a rate under the one that drew its 429s (at most halfway
    back until then): back at that rate, the same 429s passed for the endpoint's usual, and
    the job sent 4 % over the limit from then on (3.7-4.2 % 429s at 50/s and 100/s); at
    10/s a share taken for usual above 67 % broke the budget (a negative square root)."""
    ok, limited = answers_of_a_limited_endpoint(limit, 90.0)
    assert limited <= 0.015 * (ok + limited)
    assert ok >= 0.9 * limit * 45


def test_a_steady_few_429s_at_a_low_rate_are_found_after_a_decrease_judged_right() -> None:
    """An answer every 50 ms, 7.5 % of them 429s at random, after a first burst that was worse
    (its decrease is judged right). Each second holds a 429 or two, seldom told with 20 answers
    beside it in one report: neither quiet nor, at the report, enough to slow down on. At a
    second's end they are; the decrease is judged, and the 429s are found to be the endpoint's
    usual: the rate stops binding (20 answers a second, far under it). Chance quiet stretches
    can take a decrease for right a few times over: in 20 draws, at least 16 let go within
    40 s (11 of 20 did before the seconds' ends counted)."""
    let_go = 0
    for seed in range(20):
        clock = FakeClock(START)
        budget = JobBudget(None, None, adaptive=True, clock=clock)
        budget.lease(LeaseAsk(requests=8, ok=60, rate_limited=40))  # the first burst
        assert budget.rate_per_s is not None
        draw = random.Random(seed)
        rates = []
        for _ in range(int(40 / 0.05)):
            clock.now += 0.05
            limited = int(draw.random() < 0.075)
            budget.lease(LeaseAsk(requests=8, ok=1 - limited, rate_limited=limited))
            rates.append(budget.rate_per_s)
        let_go += all(rate is None or rate > 5 * 20 for rate in rates[-int(5 / 0.05):])
    assert let_go >= 16


@pytest.mark.parametrize("sees_all", [False, True])
def test_a_quiet_rate_probes_gently_then_faster_and_a_429_starts_it_over(sees_all: bool) -> None:
    """A task's own budget cannot see other tasks end and leave it their rate, and the job's
    may have cut deep on thin evidence: while quiet, either probes faster and faster."""
    clock = FakeClock(START)
    budget = JobBudget(None, None, adaptive=True, clock=clock, sees_all=sees_all)
    budget.lease(LeaseAsk(requests=8, ok=100, rate_limited=30))  # 100/s; 130/s drew 429s

    def growth(periods: int) -> list[float]:
        rates = [budget.rate_per_s or 0.0]
        for _ in range(periods):
            # every permit used, and answered (the evidence that judges a decrease)
            drain(budget, clock, ADAPT_PERIOD_S * 1.01, tasks=2, answered=True)
            rates.append(budget.rate_per_s or 0.0)
        return [after / before - 1 for before, after in pairwise(rates)]

    steps = growth(10)
    assert steps[0] > steps[1] > steps[2]  # the search back towards 130/s, halving the distance
    probing = steps[3:]
    assert probing[:PATIENCE] == pytest.approx([INCREASE] * PATIENCE)
    assert probing[PATIENCE:PATIENCE + 2] == pytest.approx([2 * INCREASE, 4 * INCREASE])
    assert max(probing) == pytest.approx(MAX_PROBE)
    rate = budget.rate_per_s
    clock.now += DECREASE_COOLDOWN_S
    budget.lease(LeaseAsk(requests=8, ok=100, rate_limited=10))
    assert budget.rate_per_s is not None and rate is not None and budget.rate_per_s < rate
    steps = growth(6)
    assert max(steps[-PATIENCE:]) < MAX_PROBE  # gently again, after the search back


def test_an_unused_rate_does_not_grow() -> None:
    clock = FakeClock(START)
    budget = JobBudget(None, None, adaptive=True, clock=clock)
    budget.lease(LeaseAsk(requests=8, ok=100, rate_limited=1))
    rate = budget.rate_per_s
    for _ in range(5):  # one request a second: far under the rate
        clock.now += ADAPT_PERIOD_S
        budget.lease(LeaseAsk(requests=1))
    assert budget.rate_per_s == rate


def test_a_configured_rate_starts_at_once_and_a_429_under_it_slows_a_little() -> None:
    clock = FakeClock(START)
    budget = JobBudget(600, None, adaptive=True, clock=clock)
    assert budget.rate_per_s == pytest.approx(10 * MARGIN)
    drain(budget, clock, 5 * ADAPT_PERIOD_S, tasks=2)
    assert budget.rate_per_s == pytest.approx(10 * MARGIN)  # never above it
    budget.lease(LeaseAsk(requests=1, ok=20, rate_limited=1))
    assert budget.rate_per_s == pytest.approx(10 * MARGIN * CONFIGURED_BACKOFF)
    budget.lease(LeaseAsk(requests=1, endpoint_requests_per_minute=300))
    assert budget.rate_per_s == pytest.approx(5 * MARGIN)  # the endpoint said less


def test_a_429_under_a_token_budget_slows_the_tokens_a_little_and_quiet_brings_them_back() -> None:
    clock = FakeClock(START)
    budget = JobBudget(None, 60_000 / MARGIN, adaptive=True, clock=clock)  # 1000 tokens/s

    def tokens_granted(seconds: float) -> float:
        granted, end = 0.0, clock.now + seconds
        while clock.now < end:
            granted += budget.lease(LeaseAsk(requests=8, tokens=80, task="a")).tokens
            clock.now += 0.01
        return granted

    assert tokens_granted(2.0) == pytest.approx(2000, abs=60)  # and 50 ms booked ahead
    budget.lease(LeaseAsk(requests=8, tokens=80, ok=100, rate_limited=1, task="a"))
    assert budget.rate_per_s is None  # no request rate imposed: the tokens bind
    assert tokens_granted(1.0) == pytest.approx(1000 * CONFIGURED_BACKOFF, abs=10)
    tokens_granted(3 * ADAPT_PERIOD_S)
    # back to just under the rate that drew the 429s, where the same 429s would come again
    assert budget.token_rate_per_s == pytest.approx(1000 * TOKEN_CAP)
    tokens_granted(CAP_PATIENCE * ADAPT_PERIOD_S)
    assert budget.token_rate_per_s == pytest.approx(1000 * (TOKEN_CAP + CAP_PROBE))
    tokens_granted(CAP_PATIENCE * ADAPT_PERIOD_S)
    assert budget.token_rate_per_s == pytest.approx(1000)  # quiet for long: the budget again
    assert tokens_granted(1.0) == pytest.approx(1000, abs=10)


def test_429s_under_a_token_budget_lower_the_rate_quiet_periods_climb_back_to() -> None:
    clock = FakeClock(START)
    budget = JobBudget(None, 60_000 / MARGIN, adaptive=True, clock=clock)  # 1000 tokens/s
    climbed_to = []
    for _ in range(3):  # 429s again each time the rate is back up
        budget.lease(LeaseAsk(requests=8, tokens=80, ok=100, rate_limited=1, task="a"))
        for _ in range(4):  # quiet periods
            clock.now += ADAPT_PERIOD_S
            budget.lease(LeaseAsk(requests=8, tokens=80, ok=100, task="a"))
        climbed_to.append(budget.token_rate_per_s)
    assert climbed_to == pytest.approx([1000 * TOKEN_CAP**n for n in (1, 2, 3)])
