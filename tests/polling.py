"""Waiting on other processes with a deadline: poll what they expose, never sleep blindly."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

POLL_S = 0.05


def wait_until(predicate: Callable[[], bool], what: str, deadline_s: float) -> None:
    """Return once `predicate()` holds; fail the test naming `what` after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_S)


def group_gone(pgid: int) -> bool:
    """Whether no process of the process group `pgid` is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def pids_running(marker: str) -> list[int]:
    """The processes whose command line contains `marker` (Linux: /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
        if marker in command:
            found.append(int(entry.name))
    return found
