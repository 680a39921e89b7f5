"""Spark's errors told apart by their condition, and the ones that mean a source or sink is not
what the config says turned into a `ConfigError` of one line.

A missing path, a folder that is not the format named, a stray file among the data: Spark
reports each as a long Java trace, at the load or only when a task reads the file. The
condition (`PySparkException.getCondition()`, or the same on a Java cause) says which it is;
the user gets one sentence naming the config key, the trace goes to the debug log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from pipeline.core.errors import ConfigError

log = logging.getLogger(__name__)

# Conditions that mean "this path or table is not there".
MISSING = ("PATH_NOT_FOUND", "TABLE_OR_VIEW_NOT_FOUND")
# ... "it is there but it is no Delta table".
NOT_DELTA = ("DELTA_TABLE_NOT_FOUND", "DELTA_MISSING_DELTA_TABLE", "DELTA_TABLE_ONLY_OPERATION")
# ... "a file in it cannot be read as the format named" (any FAILED_READ_FILE.* too).
UNREADABLE = ("CANNOT_READ_FILE_FOOTER", "UNABLE_TO_INFER_SCHEMA")
# The Java exceptions' messages name the file a read failed on.
_FILE_IN_MESSAGE = re.compile(r"reading file (\S+?)\.?(?:\s|$)")


def conditions(error: BaseException) -> list[str]:
    """The error conditions of `error` and of its causes, Python and Java, outermost first."""
    return [condition for condition, _ in _chain(error) if condition]


def has_condition(error: BaseException, *names: str) -> bool:
    """Whether `error` or a cause has one of the conditions `names` (or a sub-condition)."""
    return any(c == n or c.startswith(n + ".") for c in conditions(error) for n in names)


def read_error(
    error: Exception, section: str, *, table: str | None, path: str | None, fmt: str
) -> ConfigError | None:
    """The one-line `ConfigError` for a failure to read the `section`'s (source or sink)
    `table` or `path` in format `fmt`, or None when the failure is not about what was read."""
    key = f"{section}.table" if table is not None else f"{section}.path"
    where = table if table is not None else path
    if has_condition(error, *MISSING):
        problem = f"{where} does not exist"
    elif has_condition(error, *NOT_DELTA):
        key, problem = f"{section}.format", f"is delta, but {where} is not a Delta table"
    elif has_condition(error, "FAILED_READ_FILE", *UNREADABLE):
        found = _failed_file(error)
        key = f"{section}.format"
        problem = (
            f"is {fmt}, but {found} in {where} cannot be read as {fmt}"
            if found else f"is {fmt}, but {where} holds no readable {fmt} data"
        )  # fmt: skip
    else:
        return None
    log.debug("reading %s failed", where, exc_info=error)
    return ConfigError(key, problem)


def _failed_file(error: BaseException) -> str | None:
    for _, message in _chain(error):
        found = _FILE_IN_MESSAGE.search(message or "")
        if found:
            return found.group(1)
    return None


def _chain(error: BaseException) -> Iterator[tuple[str | None, str | None]]:
    # Python causes first; a Py4J error carries the Java exception, walked by getCause().
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield _condition(current), str(current)
        java = getattr(current, "java_exception", None)
        if java is not None:
            yield from _java_chain(java)
        current = current.__cause__ or current.__context__


def _condition(error: Any) -> str | None:
    getter = getattr(error, "getCondition", None)
    try:
        return str(getter()) if callable(getter) and getter() else None
    except Exception:  # a Java object that has no condition, or a gone gateway
        return None


def _java_chain(java: Any) -> Iterator[tuple[str | None, str | None]]:
    for _ in range(20):  # cause chains are short; never follow a cycle forever
        if java is None:
            return
        try:
            yield _condition(java), str(java.getMessage())
            java = java.getCause()
        except Exception:
            return
