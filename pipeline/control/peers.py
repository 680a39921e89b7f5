"""The request rates of one run's tasks on one host, for tasks that cannot reach the driver.

Such a task keeps a budget of its own (see `budget.JobBudget`, `sees_all`), found from its own
429s. The first 429s split the endpoint's rate unevenly (the task that started first filled the
endpoint's window, the others were refused), each task's search keeps its part in proportion,
and when the task with most of the rate ends, the one left with little runs on alone at it
(2026-12-05: 0.65-0.88 of a 100/s limit over 13 runs of two such tasks). The tasks of a host
even their rates out through small files in a folder of the run's, each task writing its own
(replaced whole: a reader never sees half of one) and reading the others'.

Only rate given up goes to another task, so the host's rate stays what the searches made it: a
task over the host's mean gives half its excess to a pool, and the tasks under it take equal
parts of the pool; a task whose file is not written for `GONE_S` has ended, and its last rate joins
the pool. The pool is what every task gave, and the last rates of the tasks that ended, less
what every task took: each file carries its task's totals. A task that slows down on its own
429s says so in its file, and the others slow down by the same factor unless they just did on
theirs: one decrease per burst for the host, as the driver's budget makes one for the job
(each task judging alone, a burst that gave one task 429s and the other none cut the host's rate
by half the step, and the next burst came sooner). Nothing here is needed for correctness: a
folder that cannot be used leaves each task with its own search.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.timing import Clock

log = logging.getLogger(__name__)

# A task looks at the others' rates (and tells its own) at most this often ...
LOOK_EVERY_S = 0.25
# ... and one not written for this long has ended; one whose Spark task ended, once its slot
# has started no next task for PAUSED_S (a slot's next task, in the same Python worker, goes on
# with its budget within about half a second).
GONE_S = 2.5
PAUSED_S = 1.0
# Folders of runs older than this are removed when a run makes its own.
KEEP_RUNS_S = 24 * 3600.0
# Under the system's temp folder, one per user (a folder only its user may use), then one per
# run.
FOLDER = "batch-chat-rates" + (f"-{os.getuid()}" if hasattr(os, "getuid") else "")


@dataclass(frozen=True)
class _Told:
    """One task's file: its rate (None: no rate yet), the rate it gave to the pool and took
    from it, in all, and when it wrote."""

    rate: float | None
    given: float
    taken: float
    at: float
    slowed: int  # decreases made on its own 429s, in all ...
    factor: float  # ... and the last one's (new rate / rate before)
    paused: bool  # its Spark task ended (its slot may start another)

    def ended(self, now: float) -> bool:
        """Whether its task counts as ended at `now`: not written for `GONE_S`, or for
        `PAUSED_S` since its Spark task ended."""
        return now - self.at > (PAUSED_S if self.paused else GONE_S)


@dataclass
class HostPeers:
    """This task's file among the run's on this host (see the module). `clock`: seconds, the
    same for every process of the host."""

    run_id: str
    root: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / FOLDER)
    clock: Clock = time.time
    name: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(4)}")
    _looked_at: float = field(default=-float("inf"), init=False)
    _given: float = field(default=0.0, init=False)
    _taken: float = field(default=0.0, init=False)
    # Every other task seen in this run: its last file, and whether it ended.
    _seen: dict[str, _Told] = field(default_factory=dict, init=False)
    _ended: set[str] = field(default_factory=set, init=False)
    _broken: bool = field(default=False, init=False)
    _slowed: int = field(default=0, init=False)
    _factor: float = field(default=1.0, init=False)
    _told: _Told | None = field(default=None, init=False)  # this task's last file

    def slowed(self, factor: float) -> None:
        """This task slowed down on its own 429s, to `factor` of its rate: the others slow down
        with it (one decrease per burst for the host, as the driver's budget makes one for the
        job), unless they just did on theirs."""
        self._slowed += 1
        self._factor = factor

    def pause(self, rate: float | None) -> None:
        """This task's Spark task ended: unless the slot's next task goes on with its budget
        within `PAUSED_S`, its `rate` goes to the others."""
        if not self._broken and self._looked_at > -float("inf"):
            self._tell(rate, self.clock(), paused=True)

    def even(
        self, rate: float | None, *, may_follow: bool
    ) -> tuple[float | None, float | None]:
        """This task's rate evened out with the host's (`rate` itself between two looks, or
        when the folder cannot be used), told to the others; first slowed by the factor of a
        decrease another task made since the last look when `may_follow`, and that factor
        (None: none followed)."""
        now = self.clock()
        if self._broken or now - self._looked_at < LOOK_EVERY_S:
            return rate, None
        try:
            if self._looked_at == -float("inf"):
                self._make_folder(now)
            running = self._read(now)
        except OSError as err:
            self._give_up(err)
            return rate, None
        self._looked_at = now
        factors = [
            told.factor
            for name, told in running.items()
            if name in self._seen and told.slowed > self._seen[name].slowed
        ]
        follow = min(factors) if factors and may_follow and rate is not None else None
        if rate is not None and self._told is not None and self._told.ended(now):
            # Counted as ended meanwhile: the others took its rate. Back, it gives that rate
            # to the pool they took it from, and evens out from nothing.
            self._given += rate
            rate = 0.0
        if rate is not None:
            rate = self._share(rate if follow is None else rate * follow, running)
        self._tell(rate, now)
        return rate, follow

    def _share(self, rate: float, running: dict[str, _Told]) -> float:
        """Give half the rate over the mean to the pool, or take an equal part of it."""
        for name in self._seen.keys() - running.keys() - self._ended:
            self._ended.add(name)
            log.info("a task of this host ended: its %.1f requests/s go to the %d running",
                     self._seen[name].rate or 0.0, 1 + len(running))  # fmt: skip
        for name in running:
            self._ended.discard(name)  # back after a pause: its rate is its own again
        self._seen.update(running)
        rates = [rate, *(told.rate for told in running.values() if told.rate is not None)]
        mean = sum(rates) / len(rates)
        if rate > mean:  # a giver does not take back
            give = (rate - mean) / 2
            self._given += give
            return rate - give
        pool = (
            self._given
            - self._taken
            + sum(told.given - told.taken for told in self._seen.values())
            + sum(self._seen[name].rate or 0.0 for name in self._ended)
        )
        if pool > 0:
            take = pool / sum(1 for r in rates if r <= mean)
            self._taken += take
            rate += take
        return rate

    def _tell(self, rate: float | None, now: float, *, paused: bool = False) -> None:
        told = _Told(rate, self._given, self._taken, now, self._slowed, self._factor, paused)
        try:
            part = self._folder / f".{self.name}.part"
            part.write_text(json.dumps(dataclasses.asdict(told)))
            os.replace(part, self._folder / f"{self.name}.json")
            self._told = told
        except OSError as err:
            self._give_up(err)

    def _give_up(self, err: OSError) -> None:
        log.info("rates of this host's tasks not shared (%s): each keeps its own", err)
        self._broken = True

    @property
    def _folder(self) -> Path:
        return self.root / self.run_id

    def _make_folder(self, now: float) -> None:
        self.root.mkdir(mode=0o700, exist_ok=True)
        for old in self.root.iterdir():
            if old.name != self.run_id and now - old.stat().st_mtime > KEEP_RUNS_S:
                shutil.rmtree(old, ignore_errors=True)
        self._folder.mkdir(mode=0o700, exist_ok=True)

    def _read(self, now: float) -> dict[str, _Told]:
        """The other tasks' files, by name: those written in the last `GONE_S`."""
        running: dict[str, _Told] = {}
        for path in self._folder.glob("*.json"):
            if path.stem == self.name:
                continue
            try:
                data = json.loads(path.read_text())
                rate = None if data["rate"] is None else float(data["rate"])
                told = _Told(
                    rate,
                    float(data["given"]),
                    float(data["taken"]),
                    float(data["at"]),
                    int(data["slowed"]),
                    float(data["factor"]),
                    bool(data["paused"]),
                )
            except (OSError, ValueError, TypeError, KeyError):
                continue  # removed since, or a file of no task of ours
            if not told.ended(now):
                running[path.stem] = told
        return running
