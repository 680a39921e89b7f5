"""What one run did and spent: counted from the rows it wrote, printed as a table, kept as JSON.

Every chunk's write carries a Spark `Observation` of `chunk_metrics()`; the counts of all chunks
add up to the run's. Latency percentiles are Spark's approximate percentiles of each chunk,
averaged by rows when a run has several chunks. The JSON goes next to the output: a path sink
`out/answers` gets `out/answers_runs/<finished>_<run id>.json`; a table sink gets one row per run
in `<table>_runs`.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StructType

from pipeline.control.progress import Tally
from pipeline.core.config import SinkConfig
from pipeline.spark.columns import named
from pipeline.spark.session import is_connect

FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls")
MAX_ATTEMPTS_BUCKET = 5  # attempts 5 and more share a bucket
PERCENTILES = (50, 95, 99)


def chunk_metrics(images: Column | None = None) -> list[Column]:
    """Aggregates observed on a chunk's rows as they are written; `images` is the number of
    images of a row (see `image_count`), when the job has an image column."""

    # Tokens of rows that sent a request: a row copied from an identical request (attempts 0)
    # carries the same usage, but it was paid for once.
    def paid(column: str) -> Column:
        return F.sum(F.when(F.col(named("attempts")) > 0, F.coalesce(F.col(column), F.lit(0))))

    finish = F.col(named("finish_reason"))
    calls = F.col(named("tool_calls"))
    attempts = F.col(named("attempts"))
    return [
        F.count(F.lit(1)).alias("rows"),
        F.count_if(F.col(named("status")) == "ok").alias("ok"),
        paid(named("prompt_tokens")).alias("prompt_tokens"),
        paid(named("completion_tokens")).alias("completion_tokens"),
        paid(named("reasoning_tokens")).alias("reasoning_tokens"),
        F.sum(F.when(calls.isNotNull(), F.size(calls))).alias("tool_calls"),
        (F.lit(0) if images is None else F.sum(F.when(attempts > 0, images))).alias("images"),
        F.sum(attempts).alias("attempts"),
        *(F.count_if(finish == reason).alias(f"finish:{reason}") for reason in FINISH_REASONS),
        F.count_if(finish.isNotNull() & ~finish.isin(*FINISH_REASONS)).alias("finish:other"),
        *(F.count_if(attempts == n).alias(f"attempts:{n}") for n in range(MAX_ATTEMPTS_BUCKET)),
        F.count_if(attempts >= MAX_ATTEMPTS_BUCKET).alias(f"attempts:{MAX_ATTEMPTS_BUCKET}+"),
        F.count_if(F.col(named("latency_ms")).isNotNull()).alias("timed"),
        *(
            F.percentile_approx("latency_ms", p / 100, 10_000).alias(f"latency_p{p}")
            for p in PERCENTILES
        ),
    ]


def image_count(column: str, schema: StructType) -> Column:
    """The number of images a row of `schema` holds in `column` (see `pipeline.core.images`):
    0 for null, the items that are not null of an array, else 1."""
    value = F.col(column)
    if isinstance(schema[column].dataType, ArrayType):
        count = F.size(F.filter(value, lambda item: item.isNotNull()))
    else:
        count = F.lit(1)
    return F.when(value.isNull(), 0).otherwise(count)


@dataclass
class ChunkTotals:
    """The run so far: counts summed over chunks, latency percentiles weighted by rows."""

    counts: Counter[str] = field(default_factory=Counter)
    _latency_sums: dict[str, float] = field(default_factory=dict)

    def add(self, observed: Mapping[str, Any]) -> None:
        timed = int(observed.get("timed") or 0)
        for name, value in observed.items():
            if name.startswith("latency_p"):
                if value is not None and timed:
                    self._latency_sums[name] = self._latency_sums.get(name, 0.0) + value * timed
            else:
                self.counts[name] += int(value or 0)

    def latency_ms(self) -> dict[str, float]:
        timed = self.counts["timed"]
        sums = self._latency_sums
        return {f"p{p}": round(sums[f"latency_p{p}"] / timed, 3)
                for p in PERCENTILES if timed and f"latency_p{p}" in sums}  # fmt: skip


@dataclass(frozen=True)
class RunSummary:
    rows: int
    ok: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    seconds: float
    tasks: int
    sink: str
    # Input rows the sink already answered (sink.mode=merge): not sent, not written again.
    skipped: int = 0
    # Of those, the rows recognised by their values (see `pipeline.spark.recognised`): their
    # requests were not even built.
    recognised: int = 0
    chunks: int = 1
    run_id: str = ""
    finish_reasons: dict[str, int] = field(default_factory=dict)
    attempts_histogram: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    # In the config's currency; None without `pricing`.
    estimated_cost: float | None = None
    # The config as run: it names the token's variable, never holds the token.
    config: dict[str, Any] = field(default_factory=dict)
    # What the live progress saw (from the tasks' reports), for comparison.
    progress: Tally | None = None
    # Of `completion_tokens`, those the endpoint said were spent reasoning.
    reasoning_tokens: int = 0
    # Functions the answers called (see `pipeline.core.tools`), over every row written.
    tool_calls: int = 0
    # Images sent with the rows' requests (see `pipeline.core.images`).
    images: int = 0
    # Why the rows were sent: new, retry (an earlier error), changed (the request differs from
    # the one their old row answered); kept: changed rows left as they were (on_change=keep).
    changes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, totals: ChunkTotals, cost: float | None, **fields: Any) -> RunSummary:
        counts = totals.counts
        rows, ok = counts["rows"], counts["ok"]
        return cls(
            rows=rows,
            ok=ok,
            errors=rows - ok,
            prompt_tokens=counts["prompt_tokens"],
            completion_tokens=counts["completion_tokens"],
            attempts=counts["attempts"],
            reasoning_tokens=counts["reasoning_tokens"],
            tool_calls=counts["tool_calls"],
            images=counts["images"],
            finish_reasons=_by_prefix(counts, "finish:"),
            attempts_histogram=_by_prefix(counts, "attempts:"),
            latency_ms=totals.latency_ms(),
            estimated_cost=cost,
            **fields,
        )

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def render(self) -> str:
        """The summary table, for a terminal or a job log."""
        cost = "n/a (no pricing in config)" if self.estimated_cost is None else (
            f"{self.estimated_cost:.4f} {self.config.get('pricing', {}).get('currency', '')}"
        )  # fmt: skip
        latency = ", ".join(f"{k} {v:.0f} ms" for k, v in self.latency_ms.items()) or "n/a"
        lines = [
            ("run", self.run_id),
            ("rows", f"{self.rows} ({self.ok} ok, {self.errors} error)"),
            ("already answered", f"{self.skipped} (not sent)"),
            *([("recognised", f"{self.recognised} by their values (no request built)")]
              if self.recognised else []),
            ("sent because", _counts({k: v for k, v in self.changes.items() if k != "kept"})),
            *([("changed, kept", f"{self.changes['kept']} (sink.on_change=keep)")]
              if self.changes.get("kept") else []),
            ("finish reasons", _counts(self.finish_reasons)),
            ("requests sent", str(self.attempts)),
            ("attempts per row", _counts(self.attempts_histogram)),
            ("tokens paid", f"in {self.prompt_tokens}, out {self.completion_tokens}"
             + (f" ({self.reasoning_tokens} reasoning)" if self.reasoning_tokens else "")),
            *([("tool calls", str(self.tool_calls))] if self.tool_calls else []),
            *([("images sent", str(self.images))] if self.images else []),
            ("latency", latency),
            ("throughput", f"{self.rows_per_s:.1f} rows/s, {counted(self.tasks, 'task')}"),
            ("wall time", f"{self.seconds:.1f} s, {counted(self.chunks, 'chunk')}"),
            ("estimated cost", cost),
            ("output", self.sink),
        ]
        width = max(len(name) for name, _ in lines)
        rule = "-" * (width + 2 + max(len(value) for _, value in lines))
        body = [f"{name.ljust(width)}  {value}" for name, value in lines]
        return "\n".join(["batch-chat run summary", rule, *body, rule])

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("progress")
        data["rows_per_s"] = round(self.rows_per_s, 3)
        data["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return json.dumps(data, indent=2, default=str)


def write_summary(spark: SparkSession, sink: SinkConfig, summary: RunSummary) -> str:
    """Keep `summary` next to the output; where it went."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    text = summary.to_json()
    if sink.table is not None:
        table = f"{sink.table}_runs"
        row = [(summary.run_id, stamp, text)]
        frame = spark.createDataFrame(row, "run_id string, finished_at string, summary string")
        frame.write.mode("append").saveAsTable(table)
        return table
    assert sink.path is not None
    target = f"{sink.path.rstrip('/')}_runs/{stamp}_{summary.run_id}.json"
    if is_connect(spark) or ("://" in target and not target.startswith("file:")):
        # A cloud path, or a Spark Connect client (whose disk need not be where the sink
        # lives): through Spark's file system, as one text file in a folder.
        spark.createDataFrame([(text,)], "value string").coalesce(1).write.text(target)
        return target
    path = Path(target.removeprefix("file:"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + os.linesep)
    return str(path)


def _by_prefix(counts: Mapping[str, int], prefix: str) -> dict[str, int]:
    return {k.removeprefix(prefix): v for k, v in sorted(counts.items())
            if k.startswith(prefix) and v}  # fmt: skip


def counted(count: int, noun: str) -> str:
    """`count` and `noun`, plural unless one: "1 chunk", "3 chunks"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"
