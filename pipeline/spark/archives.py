"""A PySpark worker's archives read once, not at every task.

Python before 3.13 re-reads the index of every zip archive on `sys.path` whenever
`importlib.invalidate_caches()` runs (CPython gh-103200, fixed in 3.13), and a PySpark worker
calls it at the start of every task. Spark puts `pyspark.zip`, py4j's zip and its core jar on
the workers' path, so each task paid for reading thousands of index entries: the largest
single cost of a short task here (a third of the Python workers' time in a run of 1,000-row
chunks). `read_once` gives those archives the behaviour 3.13 has: an archive already on the
path is taken not to change while the worker lives. Imported by the modules whose functions run
in the tasks, so a worker's first task sets it up for the rest.
"""

from __future__ import annotations

import sys
import zipimport


class _ReadOnce(zipimport.zipimporter):
    def invalidate_caches(self) -> None:
        """Nothing: the archive's index, read when it was opened, stays valid."""


def read_once() -> None:
    """Make every zip archive now on the import path skip `invalidate_caches` (before 3.13)."""
    if sys.version_info >= (3, 13):
        return
    for path, finder in list(sys.path_importer_cache.items()):
        if type(finder) is zipimport.zipimporter:
            sys.path_importer_cache[path] = _ReadOnce(path)
