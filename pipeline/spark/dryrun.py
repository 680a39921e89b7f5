"""A dry run: what a run would send now, planned exactly as a run plans, estimated without
calling the endpoint (and without a token). It writes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline.core.config import JobConfig
from pipeline.spark.chunks import Changes
from pipeline.spark.crossing import map_in_pandas
from pipeline.spark.mapper import ESTIMATE_SCHEMA, make_estimate_mapper
from pipeline.spark.prepare import planned, read_input
from pipeline.spark.session import spark_session


@dataclass(frozen=True)
class DryRun:
    """What a run would send now, estimated without calling the endpoint."""

    input_rows: int
    already_answered: int
    rows_to_answer: int
    requests: int  # distinct requests among those rows (identical ones are sent once)
    invalid_rows: int  # rows that cannot become a request: error rows, nothing sent
    prompt_tokens: int  # estimated from the prompts' length
    output_tokens: int  # at most: the sum of max_tokens
    estimated_cost: float | None  # at most, with `pricing`
    currency: str
    changes: Changes = field(default_factory=Changes)
    images: int = 0  # sent with those requests (their tokens are not in `prompt_tokens`)

    def render(self) -> str:
        cost = "" if self.estimated_cost is None else (
            f", estimated cost at most {self.estimated_cost:.4f} {self.currency}"
        )  # fmt: skip
        images = f" with {self.images} images" if self.images else ""
        return (
            f"dry run: {self.input_rows} input rows, {self.already_answered} already answered, "
            f"{self.rows_to_answer} to answer ({self.changes.describe()}): {self.requests} "
            f"requests would be sent{images} ({self.invalid_rows} rows cannot become a "
            "request); "
            f"estimated tokens in ~{self.prompt_tokens}, out at most {self.output_tokens}{cost}; "
            "nothing was sent"
        )


def dry_run(config: JobConfig, spark: SparkSession | None = None) -> DryRun:
    """Read the input, plan as `run_job` would (resume, changes, dedupe), and count what it
    would send; the endpoint is not called (and no token is needed).

    Raises:
        ConfigError: as `run_job` would, before sending.
    """
    spark = spark or spark_session()
    frame = read_input(spark, config)
    with planned(spark, config, frame, metadata=None) as work:
        built = map_in_pandas(work.pending(), make_estimate_mapper(), ESTIMATE_SCHEMA)
        sent = built.dropDuplicates(["key"]) if config.request.dedupe else built
        totals = sent.agg(
            F.count(F.lit(1)).alias("requests"),
            F.sum("prompt_tokens").alias("prompt_tokens"),
            F.sum("output_tokens").alias("output_tokens"),
            F.sum("images").alias("images"),
        ).first()
        valid = built.count()
    assert totals is not None
    prompt_tokens, output_tokens = (
        int(totals["prompt_tokens"] or 0),
        int(totals["output_tokens"] or 0),
    )
    return DryRun(
        input_rows=work.input_rows,
        already_answered=work.input_rows - work.pending_rows,
        rows_to_answer=work.pending_rows,
        requests=int(totals["requests"]),
        invalid_rows=work.pending_rows - valid,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        estimated_cost=config.pricing.cost(prompt_tokens, output_tokens),
        currency=config.pricing.currency,
        changes=work.changes,
        images=int(totals["images"] or 0),
    )
