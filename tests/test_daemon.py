"""The Python daemon of a session this package starts: workers forked with the job's modules."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

import pandas as pd
import pytest
from pyspark.sql import SparkSession

from pipeline.spark.daemon import PRELOADED, preload, start_early
from pipeline.spark.session import static_defaults

DAEMON = "spark.python.daemon.module"


def test_a_session_this_package_starts_forks_its_workers_from_the_preloading_daemon(
    spark: SparkSession,
) -> None:
    def seen(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import sys  # the worker's own, not pickled with the function

        for _ in frames:
            spec = getattr(sys.modules["__main__"], "__spec__", None)
            loaded = ",".join(name for name in PRELOADED if name in sys.modules)
            yield pd.DataFrame({"daemon": [getattr(spec, "name", "")], "loaded": [loaded]})

    rows = spark.range(2, numPartitions=2).mapInPandas(seen, "daemon string, loaded string")
    for row in rows.collect():
        assert row["daemon"] == "pipeline.spark.daemon"
        assert row["loaded"].split(",") == list(PRELOADED)


@pytest.mark.parametrize(
    ("master", "preloading"),
    [("local[2]", True), ("local[*]", True), ("local", True), ("spark://10.0.0.1:7077", False),
     ("yarn", False), ("k8s://https://10.0.0.1:443", False), ("", False)],
)  # fmt: skip
def test_only_a_local_master_gets_the_preloading_daemon(master: str, preloading: bool) -> None:
    # A cluster's executors may have the package only through --py-files, on the path of a
    # task but not of the daemon: there the daemon stays pyspark's own.
    assert (static_defaults(master).get(DAEMON) == "pipeline.spark.daemon") is preloading


def test_a_module_that_cannot_be_imported_does_not_stop_the_daemon() -> None:
    sys.modules.pop("colorsys", None)
    preload(("pipeline.no_such_module", "colorsys"))
    assert "colorsys" in sys.modules  # the names after it were still imported


def test_the_daemon_is_started_early_once_per_application(spark: SparkSession) -> None:
    first = start_early(spark)  # None when a run in this session started it already
    if first is not None:
        first.join(timeout=120)
        assert not first.is_alive()
    assert start_early(spark) is None
