"""Whether Spark's tasks can reach this process: asked once per run by one tiny task.

The job's budget, progress and token server runs in this process. On a local master, and under
a Spark Connect server on this machine, the tasks reach it on loopback. Elsewhere they may not
(a cluster that cannot open connections back to a Connect client, a firewall): one task tries
the server's health route with a short timeout, so no task of the run waits on timeouts to find
out.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator

import pandas as pd
from pyspark.sql import SparkSession

PROBE_TIMEOUT_S = 3.0
LOOPBACK = ("127.", "localhost", "::1")


def is_loopback(address: str) -> bool:
    return address.startswith(LOOPBACK)


def tasks_reach(spark: SparkSession, url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a Spark task reaches `url` (a GET answered 2xx within `timeout_s`)."""

    def probe(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for _ in frames:
            try:
                with urllib.request.urlopen(url, timeout=timeout_s) as reply:
                    reached = 200 <= reply.status < 300
            except (urllib.error.URLError, OSError, ValueError):
                reached = False
            yield pd.DataFrame({"reached": [reached]})

    rows = spark.range(1, numPartitions=1).mapInPandas(probe, "reached boolean").collect()
    return bool(rows) and bool(rows[0]["reached"])
