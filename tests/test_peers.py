"""Tasks of one host that cannot reach the driver even their rates out through files: real files
in a temp folder, each task's own `JobBudget`, one fake clock for all."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.control.budget import JobBudget
from pipeline.control.peers import GONE_S, LOOK_EVERY_S, PAUSED_S, HostPeers
from pipeline.control.protocol import LeaseAsk
from tests.clock import FakeClock

RUN = "0123456789ab"


def task(root: Path, clock: FakeClock, name: str, *, requests_per_minute: float | None = None,
         ok: int = 0, rate_limited: int = 0) -> JobBudget:  # fmt: skip
    """A task's own budget with its window on the host, after its first report (a burst of
    `ok` answers and `rate_limited` 429s sets its first rate)."""
    peers = HostPeers(RUN, root=root, clock=clock, name=name)
    budget = JobBudget(requests_per_minute, None, adaptive=True, clock=clock, sees_all=False,
                       peers=peers)  # fmt: skip
    budget.lease(LeaseAsk(requests=8, ok=ok, rate_limited=rate_limited, task=name))
    return budget


def rate(budget: JobBudget) -> float:
    assert budget.rate_per_s is not None
    return budget.rate_per_s


def look(budgets: list[JobBudget], clock: FakeClock, times: int = 1) -> None:
    """Each task asks once per look (in turn, a few ms apart, as their leases come)."""
    for _ in range(times):
        clock.now += LOOK_EVERY_S
        for n, budget in enumerate(budgets):
            clock.now += 0.003
            budget.lease(LeaseAsk(requests=8, task=f"task-{n}"))


def test_uneven_first_rates_even_out_and_the_host_never_sends_more(tmp_path: Path) -> None:
    """The first 429s split the endpoint's rate 9 to 1 (the first task filled its window):
    the two tasks meet halfway, and at no moment does their sum pass what it was."""
    clock = FakeClock()
    first = task(tmp_path, clock, "task-0", ok=100, rate_limited=30)
    second = task(tmp_path, clock, "task-1", ok=10, rate_limited=10)
    assert rate(first) > 5 * rate(second)
    total = rate(first) + rate(second)
    for _ in range(12):
        look([first, second], clock)
        assert rate(first) + rate(second) <= total * 1.0001
    assert rate(first) == pytest.approx(rate(second), rel=0.05)
    assert rate(first) + rate(second) >= 0.97 * total


def test_a_task_that_ended_leaves_its_rate_to_the_tasks_still_running(tmp_path: Path) -> None:
    clock = FakeClock()
    budgets = [task(tmp_path, clock, f"task-{n}", ok=60, rate_limited=20) for n in range(3)]
    look(budgets, clock, times=8)
    each = rate(budgets[0])
    look(budgets[:2], clock, times=int(GONE_S / LOOK_EVERY_S) + 4)  # the third one stopped
    assert rate(budgets[0]) + rate(budgets[1]) == pytest.approx(3 * each, rel=0.02)
    assert rate(budgets[0]) == pytest.approx(rate(budgets[1]), rel=0.05)


def test_a_task_alone_on_its_host_keeps_its_rate(tmp_path: Path) -> None:
    clock = FakeClock()
    alone = task(tmp_path, clock, "task-0", ok=60, rate_limited=20)
    found = rate(alone)
    look([alone], clock, times=4)
    assert rate(alone) == pytest.approx(found)
    assert [p.name for p in (tmp_path / RUN).iterdir()] == ["task-0.json"]


def test_a_set_budget_is_not_evened_out_it_is_split_evenly_already(tmp_path: Path) -> None:
    clock = FakeClock()
    first = task(tmp_path, clock, "task-0", requests_per_minute=3000)
    second = task(tmp_path, clock, "task-1", requests_per_minute=600)
    look([first, second], clock, times=6)
    assert (rate(first), rate(second)) == pytest.approx((50 * 0.985, 10 * 0.985))
    assert not (tmp_path / RUN).exists()


def test_a_folder_that_cannot_be_used_leaves_each_task_its_own_search(tmp_path: Path) -> None:
    clock = FakeClock()
    root = tmp_path / "taken"
    root.write_text("a file where the folder would go")
    first = task(root, clock, "task-0", ok=100, rate_limited=30)
    second = task(root, clock, "task-1", ok=10, rate_limited=10)
    found = (rate(first), rate(second))
    look([first, second], clock, times=4)
    assert (rate(first), rate(second)) == pytest.approx(found)


def test_a_file_of_no_task_of_ours_is_passed_over(tmp_path: Path) -> None:
    clock = FakeClock()
    first = task(tmp_path, clock, "task-0", ok=100, rate_limited=30)
    (tmp_path / RUN / "stray.json").write_text('{"rate": "fast"}')
    (tmp_path / RUN / "half.json").write_text('{"rate": 1')
    second = task(tmp_path, clock, "task-1", ok=10, rate_limited=10)
    look([first, second], clock, times=12)
    assert rate(first) == pytest.approx(rate(second), rel=0.05)


def test_a_decrease_on_one_tasks_429s_slows_the_others_of_the_host_with_it(
    tmp_path: Path,
) -> None:
    """One burst, one decrease for the host: a task that saw no 429 of it (its share of the
    endpoint's full moment was too small) slows down by the same factor, once."""
    clock = FakeClock()
    budgets = [task(tmp_path, clock, f"task-{n}", ok=60, rate_limited=20) for n in range(2)]
    look(budgets, clock, times=12)  # even, and past the first decreases' cooldown
    before = [rate(b) for b in budgets]
    budgets[0].lease(LeaseAsk(requests=8, ok=40, rate_limited=10, task="task-0"))
    factor = rate(budgets[0]) / before[0]
    assert factor < 0.9
    look(budgets, clock, times=2)
    assert rate(budgets[1]) < 0.9 * before[1]
    assert sum(map(rate, budgets)) == pytest.approx(factor * sum(before), rel=0.02)
    look(budgets, clock, times=4)  # the same decrease is followed once
    assert sum(map(rate, budgets)) >= 0.98 * factor * sum(before)


@pytest.mark.parametrize("next_task_after_s", [0.5, None])
def test_a_slot_whose_task_ended_hands_its_rate_over_unless_its_next_task_goes_on(
    tmp_path: Path, next_task_after_s: float | None
) -> None:
    """A task's last ask says its Spark task ended: with no next task in its slot within
    PAUSED_S (the run's last task there), its rate goes to the others at once, not GONE_S
    later; a next task going on with the budget keeps it."""
    clock = FakeClock()
    budgets = [task(tmp_path, clock, f"task-{n}", ok=60, rate_limited=20) for n in range(2)]
    look(budgets, clock, times=8)
    each = rate(budgets[0])
    budgets[1].lease(LeaseAsk(requests=0, task="task-1"))  # its Spark task's last ask
    if next_task_after_s is not None:
        clock.now += next_task_after_s
        budgets[1].lease(LeaseAsk(requests=8, task="task-2"))  # the slot's next task
    looks = int(0.7 * GONE_S / LOOK_EVERY_S)  # well short of GONE_S ...
    assert PAUSED_S + LOOK_EVERY_S < looks * LOOK_EVERY_S  # ... and past PAUSED_S
    look(budgets if next_task_after_s is not None else budgets[:1], clock, times=looks)
    if next_task_after_s is None:
        assert rate(budgets[0]) == pytest.approx(2 * each, rel=0.02)
    else:
        assert rate(budgets[0]) == pytest.approx(each, rel=0.02)
        assert rate(budgets[1]) == pytest.approx(each, rel=0.02)


def test_a_task_back_after_the_others_took_its_rate_evens_out_from_nothing(
    tmp_path: Path,
) -> None:
    """A slot whose next task came after PAUSED_S was counted as ended, and its rate taken:
    back, it does not send at that rate on top of theirs, but takes its part back."""
    clock = FakeClock()
    budgets = [task(tmp_path, clock, f"task-{n}", ok=60, rate_limited=20) for n in range(2)]
    look(budgets, clock, times=8)
    total = rate(budgets[0]) + rate(budgets[1])
    budgets[1].lease(LeaseAsk(requests=0, task="task-1"))
    look(budgets[:1], clock, times=int((PAUSED_S + LOOK_EVERY_S) / LOOK_EVERY_S) + 1)
    assert rate(budgets[0]) == pytest.approx(total, rel=0.02)  # taken over
    for _ in range(12):
        look(budgets, clock)
        assert rate(budgets[0]) + rate(budgets[1]) <= total * 1.02
    assert rate(budgets[1]) == pytest.approx(rate(budgets[0]), rel=0.05)
