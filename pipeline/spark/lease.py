"""One run at a time per sink: a lease kept in a one-row Delta table next to the sink.

Two runs writing one sink would pay for the same requests twice, and one of them would die on a
conflicting commit after paying. So a run takes the sink's lease before it reads the sink to
plan, renews it every third of `sink.lease_ttl_s` while it works, and gives it back at the end.

The lease lives where the sink lives (`<sink path>_lease`, or the table `<sink table>_lease`), so
it works wherever Delta does, object stores included, and needs no JVM API (plain SQL, as under
Spark Connect). Taking it is a compare-and-swap through Delta's commit protocol: the run reads
the row, and updates it only where it still holds what was read; of two runs updating it at
once, one commit wins and the other sees a conflict (or its condition no longer matching), reads
the row again and finds the winner. The first run on a sink creates the table already holding
its lease (of two creating it at once, one commit wins). A run that died (kill -9, a lost
driver) stops renewing: its lease expires after `sink.lease_ttl_s`, at once when it ran on this
host and its process is gone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pyspark.sql import Row, SparkSession

from pipeline.core.config import SinkConfig
from pipeline.core.errors import JobAborted, SinkBusy
from pipeline.spark.conditions import MISSING, NOT_DELTA, has_condition
from pipeline.spark.session import SNAPSHOT_PARTITIONS, session_conf
from pipeline.spark.tables import delta_path

log = logging.getLogger(__name__)

SLOT = "sink"  # the table's one row
# A lease is renewed this many times per time to live, so one missed renewal costs nothing.
RENEWALS_PER_TTL = 3
# Attempts at taking a free lease when commits keep conflicting.
TAKE_ATTEMPTS = 3
# How long a run waits for the lease table another run is creating, and how often it looks.
CREATE_TIMEOUT_S = 60.0
CREATE_POLL_S = 0.2

# The lease table has one row and a short log: rebuilding its state in Delta's default 50
# partitions cost a second per read or update; one does it at once.
ONE_ROW_TABLE_CONF = {SNAPSHOT_PARTITIONS: "1"}

Clock = Callable[[], float]


@dataclass(frozen=True)
class Holder:
    """Who holds the lease, as the table says (times are Unix seconds)."""

    run_id: str | None
    host: str | None = None
    pid: int | None = None
    started_at: float = 0.0
    renewed_at: float = 0.0
    expires_at: float = 0.0

    def describe(self, now: float) -> str:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at))
        return (
            f"run {self.run_id} (host {self.host}, pid {self.pid}) since {started}, renewed "
            f"{now - self.renewed_at:.0f} s ago; its lease expires in "
            f"{max(0.0, self.expires_at - now):.0f} s if that run is gone"
        )


def lease_ident(sink: SinkConfig) -> str:
    """The lease table of `sink`, as a SQL table reference."""
    if sink.table is not None:
        return f"{sink.table}_lease"
    return delta_path((sink.path or "").rstrip("/") + "_lease")


class SinkLease:
    """Hold `sink`'s lease for `run_id` while the context is open (renewed on a thread).

    With `background`, the lease is taken on a thread while the run plans (which only reads):
    the run waits for it (`wait`, `check`) before it writes or sends anything, and plans again
    when the sink changed meanwhile (see `prepare.planned`).

    Raises (on entering, or from `wait` with `background`):
        SinkBusy: another run holds the lease.
    """

    def __init__(
        self,
        spark: SparkSession,
        sink: SinkConfig,
        run_id: str,
        *,
        clock: Clock = time.time,
        host: str | None = None,
        pid: int | None = None,
        background: bool = False,
    ) -> None:
        self._spark = spark
        self._table = lease_ident(sink)
        self._where = sink.table or sink.path
        self._ttl_s = sink.lease_ttl_s
        self._run_id = run_id
        self._clock = clock
        self._host = host or socket.gethostname()
        self._pid = os.getpid() if pid is None else pid
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lost: str | None = None
        self.enforced = True
        self._background = background
        self._taker: threading.Thread | None = None
        self._failure: BaseException | None = None  # what taking the lease raised

    def __enter__(self) -> SinkLease:
        """Take the lease; with `background`, begin taking it on a thread and return at once:
        `wait` before writing or sending anything."""
        self._taker = threading.Thread(target=self._take_now, name="sink-lease-take", daemon=True)
        self._taker.start()
        if not self._background:
            self.wait()
        return self

    def wait(self) -> None:
        """Block until the lease is this run's.

        Raises:
            SinkBusy: another run holds it (or what else taking it raised).
        """
        if self._taker is not None:
            self._taker.join()
        if self._failure is not None:
            raise self._failure

    def _take_now(self) -> None:
        try:
            # A missing table is created holding this run's lease: the first run on a sink
            # takes it in that one commit. (Created first, a no-op when it exists: a query that
            # fails on a missing table would have Spark's listeners log its trace in a
            # long-lived session.)
            if not self._create():
                self.enforced = False
                return
            seen = self._first_look()
            if seen.run_id != self._run_id:
                self._take(seen)
        except BaseException as err:  # raised to whoever waits for the lease
            self._failure = err
            return
        self._renewer = threading.Thread(target=self._renew_loop, name="sink-lease", daemon=True)
        self._renewer.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._taker is not None:
            self._taker.join()  # the run failed while the lease was being taken
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._release()

    def check(self) -> None:
        """Raise when the lease is not this run's: taken by another run before this one got it,
        or lost since (not renewed in time, and taken by another run).

        Raises:
            SinkBusy: another run held it; this run sent nothing.
            JobAborted: it was lost; what was committed stays committed.
        """
        self.wait()
        if self._lost is not None:
            raise JobAborted(self._lost)

    def holder(self) -> Holder:
        """The lease row as it is now."""
        rows = self._sql(f"SELECT * FROM {self._table} WHERE slot = :slot", slot=SLOT)
        if not rows:
            return Holder(None)
        row = rows[0].asDict()
        return Holder(
            row["run_id"], row["host"], row["pid"],
            row["started_at"] or 0.0, row["renewed_at"] or 0.0, row["expires_at"] or 0.0,
        )  # fmt: skip

    def _first_look(self) -> Holder:
        """The lease row, waiting for it while another run creates the table."""
        deadline = time.monotonic() + CREATE_TIMEOUT_S
        while True:
            try:
                return self.holder()
            except Exception as err:
                if not has_condition(err, *MISSING, *NOT_DELTA) or time.monotonic() > deadline:
                    raise
            self._create()
            self._stop.wait(CREATE_POLL_S)

    def _create(self) -> bool:
        """Create the lease table, its row held by this run, unless it exists; False when
        Delta is not available (the lease is then not kept, with a warning)."""
        try:
            self._sql(
                f"CREATE TABLE IF NOT EXISTS {self._table} USING delta "
                "TBLPROPERTIES ('delta.logRetentionDuration' = 'interval 7 days') AS SELECT "
                ":slot AS slot, CAST(:me AS STRING) AS run_id, CAST(:host AS STRING) AS host, "
                "CAST(:pid AS BIGINT) AS pid, CAST(:now AS DOUBLE) AS started_at, "
                "CAST(:now AS DOUBLE) AS renewed_at, CAST(:expires AS DOUBLE) AS expires_at",
                slot=SLOT, me=self._run_id, **self._holder_now(),
            )  # fmt: skip
        except Exception as err:
            if has_condition(err, "DATA_SOURCE_NOT_FOUND", "PARSE_SYNTAX_ERROR"):
                log.warning(
                    "Delta is not on the classpath: one run at a time on %s is not enforced",
                    self._where,
                )
                return False
            # Another run created it at the same moment (its version 0 won); anything else
            # shows again when the row is read.
            log.debug("creating %s failed", self._table, exc_info=True)
        return True

    def _take(self, seen: Holder) -> None:
        for _ in range(TAKE_ATTEMPTS):
            if seen.run_id is not None and not self._abandoned(seen):
                raise SinkBusy(
                    f"{self._where} is being written by {seen.describe(self._clock())}; "
                    "this run sent nothing"
                )
            # Where the row still holds what was read: a run that took it meanwhile made this
            # update match nothing, or made its commit conflict.
            if self._claim("run_id <=> :seen", seen=seen.run_id):
                return
            seen = self.holder()
        raise SinkBusy(f"{self._where} is being written by {seen.describe(self._clock())}")

    def _claim(self, condition: str, **args: Any) -> bool:
        """Make the lease this run's where `condition` holds; whether it did (a conflicting
        commit of another run counts as not)."""
        try:
            return bool(self._update(
                "run_id = :me, host = :host, pid = :pid, started_at = :now, "
                "renewed_at = :now, expires_at = :expires",
                condition, **self._holder_now(), **args,
            ))  # fmt: skip
        except Exception as err:
            if not _is_conflict(err):
                raise
            log.debug("lease commit conflicted; reading it again", exc_info=True)
            return False

    def _holder_now(self) -> dict[str, Any]:
        """The values (besides `me`) of a lease row this run takes now: its host and pid, taken
        now, expiring one time to live from now."""
        now = self._clock()
        return {"host": self._host, "pid": self._pid, "now": now, "expires": now + self._ttl_s}

    def _abandoned(self, seen: Holder) -> bool:
        if seen.expires_at < self._clock():
            return True
        return seen.host == self._host and seen.pid is not None and not _alive(seen.pid)

    def renew(self) -> bool:
        """Push the lease's expiry out by its time to live; False when it is no longer this
        run's (not renewed in time, and taken by another run: `check` raises from then on)."""
        now = self._clock()
        renewed = self._update(
            "renewed_at = :now, expires_at = :expires", "run_id = :me",
            now=now, expires=now + self._ttl_s,
        )  # fmt: skip
        if not renewed:
            self._lost = (
                f"this run's lease on {self._where} expired and another run took it "
                f"({self.holder().describe(self._clock())}); stopped before committing more"
            )
            log.error(self._lost)
        return bool(renewed)

    def _renew_loop(self) -> None:
        every = self._ttl_s / RENEWALS_PER_TTL
        while not self._stop.wait(every):
            try:
                if not self.renew():
                    return
            except Exception as err:  # a passing failure: the next renewal may succeed
                log.warning("could not renew the lease on %s (%s)", self._where, err)

    def _release(self) -> None:
        try:
            self._update("run_id = NULL, expires_at = 0D", "run_id = :me")
        except Exception as err:  # it expires by itself
            log.warning("could not release the lease on %s (%s)", self._where, err)

    def _update(self, assignments: str, condition: str, **args: Any) -> int:
        rows = self._sql(
            f"UPDATE {self._table} SET {assignments} WHERE slot = :slot AND {condition}",
            slot=SLOT, me=self._run_id, **args,
        )  # fmt: skip
        return int(rows[0][0]) if rows else 0

    def _sql(self, statement: str, **args: Any) -> list[Row]:
        with session_conf(self._spark, ONE_ROW_TABLE_CONF):
            return self._spark.sql(statement, args=args).collect()


def _is_conflict(error: BaseException) -> bool:
    return has_condition(
        error,
        "DELTA_CONCURRENT_APPEND",
        "DELTA_CONCURRENT_DELETE_READ",
        "DELTA_CONCURRENT_DELETE_DELETE",
        "DELTA_CONCURRENT_TRANSACTION",
        "DELTA_METADATA_CHANGED",
        "DELTA_PROTOCOL_CHANGED",
        "DELTA_CONCURRENT_WRITE",
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
