"""The Python daemon of a session this package starts: pyspark's own, with the job's modules
imported before it forks a worker.

Spark forks every Python worker from one daemon per executor; a new worker imports what its
task's function needs (pandas, pyarrow, aiohttp, this package) when it unpickles it: 0.4-2.0 s
per worker on two busy cores (Spark's "time to initialize Python workers", 2026-12-04), paid
on the way to the first request, and again by any worker forked later (the workers of two
chunks running at once; a worker that died). Imported here once,
they are in every worker from its fork on (copy-on-write pages, shared until written).

`session.PRELOADING_DAEMON` names this module as `spark.python.daemon.module`. An import that
fails here is left to fail where the task needs it, with the task's own error: the daemon must
start whatever happens, or no Python task could run at all.

The daemon itself starts with the first Python task of an application (1.0-1.5 s, imports
included). `start_early` runs that task in the background while the driver plans (the input's
count, the sink's state: JVM work, which leaves a core to spare on a small job), so the run's
first Python stage finds the daemon up.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterable, Iterator

import pandas as pd
from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# What the job's `mapInPandas` functions import when they are unpickled (`spark.mapper`,
# `spark.reach`, `spark.inflight`, `spark.dryrun` and what they import).
PRELOADED = (
    "pyarrow",
    "pandas",
    "pyspark.sql.pandas.serializers",
    "pipeline.spark.mapper",
    "pipeline.spark.reach",
    "pipeline.spark.dryrun",
)


def preload(names: Iterable[str] = PRELOADED) -> None:
    """Import `names`, passing over any that fails (see the module's docstring)."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # the task that needs it fails with its own error (see above)
            pass


# Applications whose daemon was started early (once is enough: it lives as long as its executor).
_started: set[str] = set()
_started_lock = threading.Lock()


def start_early(spark: SparkSession) -> threading.Thread | None:
    """Start the Python daemon now, in the background, once per application: one task of one
    row in a thread of its own (returned; None: started before). Its failure changes nothing:
    the run's own tasks start the daemon then (and say why, if they cannot)."""
    try:
        app = spark.conf.get("spark.app.id", None) or ""
    except Exception:  # a session whose conf cannot be read: nothing to gain, nothing to lose
        return None
    with _started_lock:
        if app in _started:
            return None
        _started.add(app)

    def run() -> None:
        try:
            spark.range(1, numPartitions=1).mapInPandas(_started_worker, "rows long").collect()
        except Exception as err:
            log.debug("starting the Python workers early failed (%s)", type(err).__name__)

    thread = threading.Thread(target=run, name="start-python-workers", daemon=True)
    thread.start()
    return thread


def _started_worker(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    for frame in frames:
        yield pd.DataFrame({"rows": [len(frame)]})


if __name__ == "__main__":
    preload()
    from pyspark import daemon

    daemon.manager()  # type: ignore[no-untyped-call]  # pyspark.daemon has no annotations
