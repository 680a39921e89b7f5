"""Live progress of a run: counted by the tasks as rows finish, shown by the driver.

Each task's engine counts its finished rows (`Tally`) and its `agents.Reporter` posts the totals
every second to the driver, through the same small server that leases the rate budget (the
message is `protocol.ProgressReport`). The driver adds them up (`Board`) and shows rows done of
the total, requests per second, tokens, errors, 429s and the time left: a live bar on a
terminal, a plain log line every `LOG_EVERY_S` otherwise (job logs). Under spark-submit the
driver's stderr is a pipe even in a terminal, so whoever knows better (`make run`) asks for the
bar with `--progress bar`. Spark's accumulators would only arrive when a task ends, which for a
long task is the end.
A task that cannot reach the driver keeps working; only its progress goes unseen.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal

from pipeline.core.chat import RowResult

log = logging.getLogger(__name__)

# bar: a live bar; log: a log line every LOG_EVERY_S; auto: the bar on a terminal.
ProgressStyle = Literal["auto", "bar", "log"]

# How often the bar (or the log check) refreshes; the tasks report as often (`agents.Reporter`).
REPORT_EVERY_S = 1.0
LOG_EVERY_S = 30.0


@dataclass
class Tally:
    """Counts of finished rows, and of what was sent for them."""

    rows: int = 0
    ok: int = 0
    errors: int = 0
    requests: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def count(self, result: RowResult) -> None:
        self.rows += 1
        if result.status == "ok":
            self.ok += 1
        else:
            self.errors += 1
        if result.reused:  # paid for by an earlier attempt, which counted it
            return
        self.requests += result.attempts
        if result.attempts and result.completion is not None:  # a copy was not paid for
            self.prompt_tokens += result.completion.prompt_tokens or 0
            self.completion_tokens += result.completion.completion_tokens or 0

    def paid(self) -> Tally:
        """Only what was paid for: requests, their tokens, 429s (no rows)."""
        return Tally(
            requests=self.requests,
            rate_limited=self.rate_limited,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )

    def add(self, other: Tally) -> None:
        for name, value in other.to_dict().items():
            setattr(self, name, getattr(self, name) + value)

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tally:
        """The counts in `data`; keys that are not counts are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in data.items() if k in names})


@dataclass
class _Task:
    """One task's latest attempt, and what its earlier (lost) attempts paid for."""

    attempt: int = -1
    seq: int = 0
    totals: Tally = dataclasses.field(default_factory=Tally)
    # Requests, tokens and 429s of the lost attempts; their rows are the latest attempt's to
    # count (it recovers their answers, see `pipeline.http.journal`, or answers them again).
    paid_before: Tally = dataclasses.field(default_factory=Tally)

    def report(self, attempt: int, seq: int, totals: Tally) -> None:
        if attempt > self.attempt:
            if self.attempt >= 0:
                self.paid_before.add(self.totals.paid())
            self.attempt, self.seq, self.totals = attempt, seq, totals
        elif attempt == self.attempt and seq > self.seq:
            self.seq, self.totals = seq, totals


class Board:
    """The driver's sum of every task's counts for one run, shown while it runs.

    `report` is called from the server's thread; `start`/`stop` from the job's.
    """

    def __init__(
        self, total_rows: int, *, style: ProgressStyle = "auto", stream: IO[str] | None = None
    ) -> None:
        self.total_rows = total_rows
        self._style = style
        self._reports: dict[str, _Task] = {}
        self._stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._show, name="progress", daemon=True)
        self._bar: Any = None
        self._logs_above: Any = None

    def report(self, reporter: str, seq: int, totals: Tally, attempt: int = 0) -> None:
        """A task attempt's totals so far; an older or repeated report of the same attempt, or
        one of an attempt older than the task's latest, is ignored."""
        with self._lock:
            task = self._reports.setdefault(reporter, _Task())
            task.report(attempt, seq, totals)

    @property
    def tally(self) -> Tally:
        """Every task's latest totals, added up (with what their lost attempts paid)."""
        total = Tally()
        with self._lock:
            for task in self._reports.values():
                total.add(task.totals)
                total.add(task.paid_before)
        return total

    def start(self) -> Board:
        self._started = time.monotonic()
        if self._style == "bar" or (self._style == "auto" and self._stream.isatty()):
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=self.total_rows, unit="row", file=self._stream,
                             dynamic_ncols=True, smoothing=0.1)  # fmt: skip
            # Log lines print above the bar instead of through it.
            self._logs_above = logging_redirect_tqdm()
            self._logs_above.__enter__()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._update_bar()
        if self._bar is not None:
            self._bar.close()
            self._logs_above.__exit__(None, None, None)
        else:
            log.info("progress: %s", self.line())

    def line(self) -> str:
        """One line: rows done of the total, rates, tokens, errors, 429s, time left."""
        done = self.tally
        elapsed = max(1e-9, time.monotonic() - self._started)
        share = done.rows / self.total_rows if self.total_rows else 1.0
        rate = done.rows / elapsed
        left = max(0, self.total_rows - done.rows) / rate if rate > 0 else None
        eta = "?" if left is None else _duration(left)
        return (
            f"{done.rows}/{self.total_rows} rows ({share:.0%}), {done.requests / elapsed:.1f} "
            f"requests/s, tokens in {done.prompt_tokens} out {done.completion_tokens}, "
            f"{done.errors} errors, {done.rate_limited} 429s, {eta} left"
        )

    def _show(self) -> None:
        last_log = time.monotonic()
        while not self._stop.wait(REPORT_EVERY_S):
            if self._bar is not None:
                self._update_bar()
            elif time.monotonic() - last_log >= LOG_EVERY_S:
                last_log = time.monotonic()
                log.info("progress: %s", self.line())

    def _update_bar(self) -> None:
        if self._bar is None:
            return
        done = self.tally
        self._bar.n = done.rows
        self._bar.set_postfix_str(
            f"{done.errors} err, {done.rate_limited} 429, tok {done.prompt_tokens}/"
            f"{done.completion_tokens}",
            refresh=False,
        )
        self._bar.refresh()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
