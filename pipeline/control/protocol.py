"""Every message between the driver and its tasks, defined once for both sides.

The driver's server (`control.server`) and the tasks' agents (`control.agents`) speak JSON over
HTTP. Each message is a frozen dataclass here with `to_json` (a dict for `json=`) and
`from_json` (from a decoded body), so the two sides cannot drift apart: a field added to a
message is sent and read by the same code. `from_json` ignores keys it does not know, so a
field added on one side never breaks the other mid-upgrade. The route paths are here too; the
server serves them under a per-job secret key, and the tasks get the full URLs in their
`ClientSettings`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.control.progress import Tally
from pipeline.core.secrets import Secret

# Under the server's `/{key}`: a task leases permits (POST LeaseAsk → LeaseGrant), reports its
# progress (POST ProgressReport → {}), fetches the current token (GET → TokenReply).
LEASE_PATH = "/lease"
PROGRESS_PATH = "/progress"
TOKEN_PATH = "/token"
# Answers 200 to anyone with the job's key: whether tasks can reach the server at all.
HEALTH_PATH = "/health"


def _known(cls: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `data` that name a field of the dataclass `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in data.items() if key in names}


@dataclass(frozen=True)
class LeaseAsk:
    """A task's request for permits, with what it saw since its last lease."""

    requests: int
    tokens: float = 0.0
    ok: int = 0
    rate_limited: int = 0
    # Real minus estimated tokens of the requests settled since the last lease.
    token_correction: float = 0.0
    # The endpoint's own limits, from x-ratelimit-limit-* headers (per minute).
    endpoint_requests_per_minute: float | None = None
    endpoint_tokens_per_minute: float | None = None
    # Permits of earlier grants the task will not use (it is ending): others may have them.
    returned: int = 0
    # Which task asks (any name unique to it): the oldest task running is served first.
    task: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LeaseAsk:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class LeaseGrant:
    """What the driver granted: permits and when to spend them, or (none) how long to wait.

    The permits are paced: the first may go `start_s` after the grant, each next one
    `interval_s` after the one before (both 0: all at once).
    """

    requests: int
    tokens: float
    # When nothing was granted: how long to wait before asking again.
    wait_s: float
    start_s: float = 0.0
    interval_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LeaseGrant:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class ProgressReport:
    """A task attempt's totals so far. Totals, not increments, numbered per reporter: a report
    that arrives twice or late changes nothing (see `Board.report`). `reporter` names the task
    (run, chunk, partition), so a retried attempt's rows replace the lost attempt's."""

    reporter: str
    seq: int
    totals: Tally
    attempt: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"reporter": self.reporter, "seq": self.seq, "totals": self.totals.to_dict(),
                "attempt": self.attempt}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProgressReport:
        return cls(
            str(data["reporter"]), int(data["seq"]), Tally.from_dict(data["totals"]),
            int(data.get("attempt", 0)),
        )  # fmt: skip


@dataclass(frozen=True)
class TokenReply:
    """The driver's current token for the endpoint; a `Secret`, so it never prints itself."""

    token: Secret

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token.reveal()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenReply:
        return cls(Secret(str(data["token"])))
