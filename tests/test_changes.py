"""Identity across runs: what the sink answers is what is asked now, duplicate ids keep every row,
and a sink is never damaged by a run it cannot take. Real Spark, real Delta/Parquet files, the
real local endpoint's counters."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.core.errors import ConfigError, JobAborted
from pipeline.serving.process import LocalEndpoint
from pipeline.spark.dryrun import dry_run
from pipeline.spark.job import run_job
from tests.conftest import TOKEN_ENV
from tests.test_job import job, prompts, run, save

DELTA = {"format": "delta", "mode": "merge"}
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "confidence": {"type": "number"}},
}


def sink_rows(spark: SparkSession, path: Path, fmt: str = "delta") -> DataFrame:
    return spark.read.format(fmt).option("mergeSchema", "true").load(str(path))


def ask(echo: LocalEndpoint, path: str, out: Path, **sections: Any) -> Any:
    """The job config for `path` → `out` (Delta, merge), with `sections` laid over it."""
    source_section = {"path": path, "id_column": "id", "prompt_column": "prompt",
                      **sections.pop("source", {})}  # fmt: skip
    return job(echo, source_section, {"path": str(out), **DELTA, **sections.pop("sink", {})},
               **sections)  # fmt: skip


def test_duplicate_ids_keep_every_row_across_chunks_and_runs(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    """40 rows, 20 ids used twice (one pair with the same prompt), an existing sink, 4 chunks:
    40 output rows, and a rerun sends nothing."""
    rows = [(i % 20, f"question {i}") for i in range(39)] + [(19, "question 19")]
    source = save(spark.createDataFrame(rows, "id long, prompt string"), tmp_path / "in")
    sink = tmp_path / "out"
    save(spark.createDataFrame([(99, "seed")], "id long, prompt string"), tmp_path / "seed")
    run(spark, ask(echo, str(tmp_path / "seed"), sink))  # the sink exists before
    config = ask(echo, source, sink, sink={"chunk_rows": 10}, request={"dedupe": False})
    echo.reset()
    summary, _ = run(spark, config)
    assert summary.chunks == 4 and summary.rows == 40
    assert echo.stats()["requests_total"] == 40
    out = sink_rows(spark, sink).filter("id != 99")
    assert out.count() == 40
    by_prompt = {(r.id, r.prompt): r.n for r in out.groupBy("id", "prompt").agg(
        F.count(F.lit(1)).alias("n")).collect()}  # fmt: skip
    assert by_prompt == {**{(i % 20, f"question {i}"): 1 for i in range(39)},
                         (19, "question 19"): 2}  # fmt: skip
    assert out.filter("completion = prompt").count() == 40

    echo.reset()
    again, _ = run(spark, config)
    assert (again.rows, again.skipped, echo.stats()["requests_total"]) == (0, 40, 0)


def test_edited_prompts_are_answered_again_and_their_rows_replaced(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    sink = tmp_path / "out"
    first = save(prompts(spark, 30), tmp_path / "v1")
    run(spark, ask(echo, first, sink))
    edited = prompts(spark, 30).withColumn(
        "prompt",
        F.when(F.col("id") < 10, F.concat(F.lit("edited "), F.col("prompt"))).otherwise(
            F.col("prompt")
        ),
    )
    second = save(edited, tmp_path / "v2")
    config = ask(echo, second, sink, sink={"chunk_rows": 4})
    assert dry_run(config, spark).changes.changed == 10
    echo.reset()
    summary, _ = run(spark, config)
    assert echo.stats()["requests_total"] == 10  # exactly the edited rows
    assert (summary.rows, summary.skipped, summary.changes["changed"]) == (10, 20, 10)
    out = sink_rows(spark, sink)
    assert out.count() == 30 and out.select("id").distinct().count() == 30
    assert out.filter("completion = prompt").count() == 30  # every answer is to today's prompt
    assert out.filter("id < 10 AND completion LIKE 'edited %'").count() == 10

    echo.reset()
    again, _ = run(spark, config)
    assert (again.rows, echo.stats()["requests_total"]) == (0, 0)


def test_a_run_stopped_after_its_delete_leaves_no_old_row_and_the_next_answers_them(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    """The rows a run replaces go in one commit before its first chunk: a run that stops
    then (a wrong token here) leaves the edited ids without a row, never two rows of one id,
    and the next run answers just those, as new."""
    sink = tmp_path / "out"
    run(spark, ask(echo, save(prompts(spark, 30), tmp_path / "v1"), sink))
    edited = prompts(spark, 30).withColumn(
        "prompt",
        F.when(F.col("id") < 10, F.concat(F.lit("edited "), F.col("prompt"))).otherwise(
            F.col("prompt")
        ),
    )
    config = ask(echo, save(edited, tmp_path / "v2"), sink, sink={"chunk_rows": 4},
                 limits={"max_fatal_errors": 1, "concurrency": 1})  # fmt: skip
    with pytest.raises(JobAborted):
        run_job(config, spark, env={TOKEN_ENV: "dapi-not-the-token"})
    ids = sorted(r.id for r in sink_rows(spark, sink).select("id").collect())
    assert ids == list(range(10, 30))  # the 10 edited rows' old answers are gone, all of them
    echo.reset()
    summary, _ = run(spark, config)
    assert (summary.rows, summary.changes["new"], echo.stats()["requests_total"]) == (10, 10, 10)
    out = sink_rows(spark, sink)
    assert out.count() == 30 and out.select("id").distinct().count() == 30
    assert out.filter("id < 10 AND completion LIKE 'edited %'").count() == 10


@pytest.mark.parametrize(
    ("change", "values"),
    [
        ("response format", {"request": {"response_format": "json_object"}}),
        ("system prompt", {"source": {"system_prompt": "Answer in French."}}),
        ("max_tokens", {"request": {"max_tokens": 33}}),
        ("API", {"endpoint": {"api": "chat_completions"}}),
    ],
)
def test_a_changed_config_answers_again(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path, change: str, values: dict
) -> None:
    sink, source = tmp_path / "out", save(prompts(spark, 12), tmp_path / "in")
    run(spark, ask(echo, source, sink))
    echo.reset()
    summary, _ = run(spark, ask(echo, source, sink, **values))
    assert echo.stats()["requests_total"] == 12, change
    assert summary.changes["changed"] == 12
    assert sink_rows(spark, sink).count() == 12


def test_json_schema_on_a_text_sink_adds_the_parsed_column(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    rows = [(i, f'{{"label": "ok", "confidence": {i / 10}}}') for i in range(6)]
    source = save(spark.createDataFrame(rows, "id long, prompt string"), tmp_path / "in")
    sink = tmp_path / "out"
    run(spark, ask(echo, source, sink))
    request = {"response_format": "json_schema", "json_schema": SCHEMA, "max_tokens": 64}
    echo.reset()
    summary, _ = run(spark, ask(echo, source, sink, request=request))
    assert (summary.ok, echo.stats()["requests_total"]) == (6, 6)
    out = sink_rows(spark, sink)
    assert out.count() == 6
    assert {(r.parsed.label, r.parsed.confidence) for r in out.collect()} == {
        ("ok", i / 10) for i in range(6)
    }


def test_keep_leaves_changed_rows_as_they_are(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    sink, source = tmp_path / "out", save(prompts(spark, 8), tmp_path / "in")
    run(spark, ask(echo, source, sink))
    echo.reset()
    summary, _ = run(spark, ask(echo, source, sink, request={"max_tokens": 40},
                                sink={"on_change": "keep"}))  # fmt: skip
    assert echo.stats()["requests_total"] == 0
    assert summary.changes["kept"] == 8 and summary.skipped == 8
    assert "changed, kept" in summary.render()


def test_parquet_sink_refuses_changed_rows_before_sending(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    sink, source = tmp_path / "out", save(prompts(spark, 8), tmp_path / "in")
    run(spark, ask(echo, source, sink, sink={"format": "parquet"}))
    echo.reset()
    with pytest.raises(ConfigError, match="8 input rows ask another request") as caught:
        run(spark, ask(echo, source, sink, request={"max_tokens": 40},
                       sink={"format": "parquet"}))  # fmt: skip
    assert caught.value.key == "sink.on_change"
    assert echo.stats()["requests_total"] == 0
    assert sink_rows(spark, sink, "parquet").count() == 8


@pytest.mark.parametrize("id_column", ["id", None])
def test_a_sink_written_before_request_hash_counts_as_answered(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path, id_column: str | None
) -> None:
    """A sink of the previous version (no request_hash, content ids of the old formula): its
    rows count as answered, the column is filled in, and later changes are seen."""
    sink, source = tmp_path / "out", save(prompts(spark, 10), tmp_path / "in")
    settings = {"source": {"id_column": id_column}}
    run(spark, ask(echo, source, sink, **settings))
    legacy = sink_rows(spark, sink).drop("request_hash", "config_hash")
    if id_column is None:
        legacy = legacy.withColumn("request_id", F.sha2(F.col("prompt"), 256).substr(1, 32))
    legacy.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(
        str(sink)
    )
    echo.reset()
    summary, _ = run(spark, ask(echo, source, sink, **settings))
    assert (summary.skipped, echo.stats()["requests_total"]) == (10, 0)
    out = sink_rows(spark, sink)
    assert out.count() == 10 and out.filter("request_hash IS NULL").count() == 0
    assert out.filter("config_hash IS NULL").count() == 0  # the next rerun recognises them
    summary, _ = run(spark, ask(echo, source, sink, request={"max_tokens": 20}, **settings))
    assert (summary.changes["changed"], echo.stats()["requests_total"]) == (10, 10)
    assert sink_rows(spark, sink).count() == 10


def test_a_sink_whose_columns_changed_type_is_refused_before_sending(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    sink = tmp_path / "out"
    as_text = prompts(spark, 5).withColumn("id", F.col("id").cast("string"))
    run(spark, ask(echo, save(as_text, tmp_path / "v1"), sink))
    echo.reset()
    for mode in ("merge", "append"):
        with pytest.raises(ConfigError) as caught:
            run(spark, ask(echo, save(prompts(spark, 5), tmp_path / f"v2{mode}"), sink,
                           sink={"mode": mode}))  # fmt: skip
        assert caught.value.key == "sink"
        assert "id (sink: string, now: bigint)" in str(caught.value)
    assert echo.stats()["requests_total"] == 0
    assert sink_rows(spark, sink).count() == 5


def test_a_parquet_sink_written_before_request_hash_keeps_working(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    """Parquet files cannot be rewritten in place: the older rows' identity is worked out from
    their input columns on each run, and new files carry request_hash."""
    sink, source = tmp_path / "out", tmp_path / "in"
    prompts(spark, 10).write.parquet(str(source))
    parquet = {"sink": {"format": "parquet"}}
    run(spark, ask(echo, str(source), sink, **parquet))
    old = sink_rows(spark, sink, "parquet").drop("request_hash", "config_hash")
    old.write.parquet(str(tmp_path / "old"))
    shutil.rmtree(sink)
    shutil.move(tmp_path / "old", sink)
    echo.reset()
    summary, _ = run(spark, ask(echo, str(source), sink, **parquet))
    assert (summary.skipped, echo.stats()["requests_total"]) == (10, 0)
    prompts(spark, 12).filter("id >= 10").write.mode("append").parquet(str(source))
    summary, _ = run(spark, ask(echo, str(source), sink, **parquet))
    assert (summary.rows, summary.skipped, echo.stats()["requests_total"]) == (2, 10, 2)
    out = sink_rows(spark, sink, "parquet")
    assert out.count() == 12 and out.filter("request_hash IS NOT NULL").count() == 2
    # The new rows are recognised by their values from now on; the older ones are keyed.
    assert out.filter("config_hash IS NOT NULL").count() == 2
    echo.reset()
    recognising = {"sink": {"format": "parquet", "recognise_from_rows": 0}}
    summary, _ = run(spark, ask(echo, str(source), sink, **recognising))
    assert (summary.skipped, summary.recognised, echo.stats()["requests_total"]) == (12, 2, 0)
