"""The sample prompt table `make run` answers: a few hundred short questions over columns.

Written twice, as Parquet and as Delta, with an id, a prompt, the columns a template could use
and a per-row `max_tokens` override on some rows (small enough that those answers are cut).
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

from pipeline.spark.session import spark_session

TOPICS = (
    "photosynthesis",
    "the water cycle",
    "plate tectonics",
    "black holes",
    "vaccines",
    "compound interest",
    "the French Revolution",
    "machine learning",
    "volcanoes",
    "DNA",
    "inflation",
    "the internet",
    "climate change",
    "the Roman Empire",
    "electric cars",
)
QUESTIONS = (
    "Explain {topic} to a ten year old.",
    "What is the most surprising fact about {topic}?",
    "Give one common misconception about {topic} and correct it.",
    "Summarise {topic} in a single sentence.",
)
AUDIENCES = ("a student", "an engineer", "a journalist", "a retiree")
# Every n-th row overrides max_tokens with a budget too small for a full answer.
SHORT_ANSWER_EVERY = 10
SHORT_ANSWER_TOKENS = 4

SCHEMA = StructType(
    [
        StructField("id", LongType(), nullable=False),
        StructField("topic", StringType()),
        StructField("audience", StringType()),
        StructField("prompt", StringType()),
        StructField("max_tokens", IntegerType()),
    ]
)


def sample_rows(n: int) -> list[tuple[int, str, str, str, int | None]]:
    """`n` deterministic sample prompts."""
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        question = QUESTIONS[(i // len(TOPICS)) % len(QUESTIONS)].format(topic=topic)
        audience = AUDIENCES[i % len(AUDIENCES)]
        short = SHORT_ANSWER_TOKENS if i % SHORT_ANSWER_EVERY == 0 else None
        rows.append((i + 1, topic, audience, f"{question} (for {audience})", short))
    return rows


def write_sample(out: str | Path, n: int = 300, spark: SparkSession | None = None) -> list[str]:
    """Write the sample as `<out>/prompts_parquet` and `<out>/prompts_delta`; their paths."""
    spark = spark or spark_session("batch-chat-sample")
    frame = spark.createDataFrame(sample_rows(n), SCHEMA).coalesce(1)
    paths = []
    for fmt in ("parquet", "delta"):
        path = str(Path(out) / f"prompts_{fmt}")
        frame.write.format(fmt).mode("overwrite").save(path)
        paths.append(path)
    return paths
