"""The sample prompt table `make run` answers: a few hundred short questions over columns.

Written twice, as Parquet and as Delta, with an id, a prompt, the columns a template could use,
a per-row `max_tokens` override on some rows (small enough that those answers are cut) and, on
some rows, a tiny PNG image (`--set source.image_column=image`).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql.types import (
    BinaryType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

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
# Every n-th row carries an image: a 2x2 PNG of the row's colour.
IMAGE_EVERY = 5

SCHEMA = StructType(
    [
        StructField("id", LongType(), nullable=False),
        StructField("topic", StringType()),
        StructField("audience", StringType()),
        StructField("prompt", StringType()),
        StructField("max_tokens", IntegerType()),
        StructField("image", BinaryType()),
    ]
)


def tiny_png(red: int, green: int, blue: int) -> bytes:
    """A valid 2x2 RGB PNG of one colour (signature, IHDR, IDAT, IEND chunks)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)  # 2x2, 8-bit RGB
    pixels = (b"\x00" + bytes((red, green, blue)) * 2) * 2  # each row: filter 0, 2 pixels
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b""))  # fmt: skip


def sample_rows(n: int) -> list[tuple[int, str, str, str, int | None, bytes | None]]:
    """`n` deterministic sample prompts."""
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        question = QUESTIONS[(i // len(TOPICS)) % len(QUESTIONS)].format(topic=topic)
        audience = AUDIENCES[i % len(AUDIENCES)]
        short = SHORT_ANSWER_TOKENS if i % SHORT_ANSWER_EVERY == 0 else None
        image = tiny_png(i % 256, 128, 255 - i % 256) if i % IMAGE_EVERY == 0 else None
        rows.append((i + 1, topic, audience, f"{question} (for {audience})", short, image))
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
