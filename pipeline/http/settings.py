"""What the driver hands each task to build its chat client: one picklable, frozen object.

The driver fills it from the job's config and its control server's URLs (`pipeline.spark.job`);
Spark pickles it into every task, where the engine builds the client, its limiter
(`limiter.build_limiter`) and its token source from it. Nothing here opens a connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.core.config import EndpointConfig, LimitsConfig, RequestConfig
from pipeline.core.secrets import Secret


@dataclass(frozen=True)
class ClientSettings:
    """Everything a task needs to build its client; picklable, so Spark ships it to executors."""

    endpoint: EndpointConfig
    limits: LimitsConfig
    # What every request of the job carries besides its messages (`request.extra`, tools, the
    # structured-output ask), and what every answer is checked against.
    request: RequestConfig = field(default_factory=RequestConfig)
    token: Secret | None = None
    # `endpoint.headers` with their values (from the environment, see `secrets.resolve_headers`).
    headers: Mapping[str, Secret] = field(default_factory=dict)
    # This task's share of the job's per-minute budgets (used alone without `budget_url`).
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    # The job's shared budget on the driver (see `pipeline.control.server`).
    budget_url: str | None = None
    # Where the driver collects the tasks' progress (see `pipeline.control.progress`).
    progress_url: str | None = None
    # Where the driver hands out the current token, when it renews (OAuth via the SDK).
    token_url: str | None = None
    # Tasks that cannot reach the driver (see `pipeline.spark.reach`): each keeps a budget of
    # its own, its share of the job's, and with `limits.adaptive` finds the rate the endpoint
    # admits it from its own answers, as the driver would for the job.
    alone: bool = False
    # How many tasks share the job's budgets at once (this task's part of an endpoint limit).
    tasks: int = 1
    # The run these tasks answer for: a task's own budget (`alone`) is kept for the next task
    # of the same run in the same Python worker (see `limiter.build_limiter`).
    run_id: str = ""
