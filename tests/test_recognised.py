"""A merge rerun recognises the rows its sink answers by their values, without building their
requests, and plans the rest exactly as before: copies, rows of one request with other values,
stale rows of a changed id. Real Spark, real Delta files, the real local endpoint's counters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from pipeline.serving.process import LocalEndpoint
from pipeline.spark.recognised import KEYS, recognise, release
from pipeline.spark.summary import RunSummary
from tests.test_changes import ask as ask_without
from tests.test_changes import sink_rows
from tests.test_job import prompts, run, save


def ask(echo: LocalEndpoint, path: str, out: Path, **sections: Any) -> Any:
    """`test_changes.ask`, recognising rows whatever the input's size (unless `sections` say)."""
    sink = {"recognise_from_rows": 0, **sections.pop("sink", {})}
    return ask_without(echo, path, out, sink=sink, **sections)


def rerun(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path, schema: str,
    first: list[tuple[Any, ...]], again: list[tuple[Any, ...]], **sections: Any,
) -> RunSummary:
    """A run over the rows `first`, then one over `again`, into one Delta sink (tmp_path/out):
    the second run's summary; the endpoint's counters count the second run alone."""
    for name, rows in (("v1", first), ("v2", again)):
        echo.reset()
        source = save(spark.createDataFrame(rows, schema), tmp_path / name)
        summary, _ = run(spark, ask(echo, source, tmp_path / "out", **sections))
    return summary


def test_a_rerun_keys_only_the_rows_its_sink_does_not_answer(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    """Half the rows carry a per-row max_tokens and half a null one: both are recognised."""
    sink = tmp_path / "out"
    first = prompts(spark, 30).selectExpr(
        "id", "prompt", "IF(id % 2 = 0, 20, NULL) AS max_tokens"
    )
    config = ask(echo, save(first, tmp_path / "v1"), sink,
                 source={"max_tokens_column": "max_tokens"})  # fmt: skip
    run(spark, config)
    more = first.unionByName(
        prompts(spark, 35).filter("id >= 30").selectExpr("id", "prompt", "NULL AS max_tokens")
    )
    source = save(more, tmp_path / "v2")
    config = ask(echo, source, sink, source={"max_tokens_column": "max_tokens"})
    echo.reset()
    summary, _ = run(spark, config)
    assert (summary.recognised, summary.skipped, summary.rows) == (30, 30, 5)
    assert echo.stats()["requests_total"] == 5
    assert sink_rows(spark, sink).count() == 35

    # Below `sink.recognise_from_rows` every row is keyed, with the same plan.
    echo.reset()
    config = ask(echo, source, sink, sink={"recognise_from_rows": 36},
                 source={"max_tokens_column": "max_tokens"})  # fmt: skip
    summary, _ = run(spark, config)
    assert (summary.recognised, summary.skipped, summary.rows) == (0, 35, 0)
    assert echo.stats()["requests_total"] == 0

    # Another default max_tokens: nothing is recognised; keyed, the 15 rows with their own
    # max_tokens still ask what their rows answer, the 20 others are asked again.
    echo.reset()
    config = ask(echo, save(more, tmp_path / "v3"), sink, request={"max_tokens": 40},
                 source={"max_tokens_column": "max_tokens"})  # fmt: skip
    summary, _ = run(spark, config)
    assert (summary.recognised, summary.skipped, summary.changes["changed"]) == (0, 15, 20)
    assert echo.stats()["requests_total"] == 20
    assert sink_rows(spark, sink).count() == 35


def test_copies_beyond_those_the_sink_holds_are_sent(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    first = [(1, "p"), (1, "p"), (2, "q")]
    assert not cached_frames(spark)
    summary = rerun(spark, echo, tmp_path, "id long, prompt string", first, [*first, (1, "p")],
                    request={"dedupe": False})  # fmt: skip
    assert (summary.recognised, summary.rows, echo.stats()["requests_total"]) == (3, 1, 1)
    assert sink_rows(spark, tmp_path / "out").filter("id = 1").count() == 3
    # What planning kept (the join's rows, the copies counted, the keyed rest) is let go.
    assert not cached_frames(spark)


def cached_frames(spark: SparkSession) -> bool:
    """Whether the session keeps any DataFrame (Delta's own snapshot caches are not those)."""
    return not spark._jsparkSession.sharedState().cacheManager().isEmpty()


def test_a_row_asking_what_a_recognised_row_asks_is_not_answered_by_the_same_sink_row(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    """A null max_tokens and the configured one (32) are one request with other values: the
    sink's one answer is taken by the row it was written for; the other row is sent."""
    summary = rerun(spark, echo, tmp_path, "id long, prompt string, max_tokens int",
                    [(1, "p", None)], [(1, "p", None), (1, "p", 32)],
                    source={"max_tokens_column": "max_tokens"},
                    request={"dedupe": False})  # fmt: skip
    assert (summary.recognised, summary.rows, echo.stats()["requests_total"]) == (1, 1, 1)
    assert sink_rows(spark, tmp_path / "out").count() == 2


def test_an_edited_row_of_a_duplicate_id_leaves_its_unchanged_sibling(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    summary = rerun(spark, echo, tmp_path, "id long, prompt string",
                    [(1, "first question"), (1, "second question")],
                    [(1, "first question"), (1, "second, edited")])  # fmt: skip
    assert (summary.recognised, summary.changes["changed"]) == (1, 1)
    assert echo.stats()["requests_total"] == 1
    out = {(r.prompt, r.completion) for r in sink_rows(spark, tmp_path / "out").collect()}
    assert out == {("first question", "first question"), ("second, edited", "second, edited")}


def test_floating_point_values_compare_by_their_spelling(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    """-0.0 equals 0.0 in a Spark join, but it is another request body: sent again."""
    summary = rerun(spark, echo, tmp_path, "id long, prompt string, temperature double",
                    [(1, "p", 0.0), (2, "q", 0.5)], [(1, "p", -0.0), (2, "q", 0.5)],
                    source={"temperature_column": "temperature"})  # fmt: skip
    assert (summary.recognised, summary.changes["changed"]) == (1, 1)
    assert echo.stats()["requests_total"] == 1


def test_only_the_fingerprints_of_the_sink_rows_travel_to_the_join(spark: SparkSession) -> None:
    """The input meets the sink by the two hashes of its values alone: the sink's side of the
    join carries nothing else (its prompts are hashed where they are read, not shuffled)."""
    schema = "id long, prompt string"
    frame = spark.createDataFrame([(1, "p"), (2, "q"), (2, "q"), (3, "r")], schema)
    answers = spark.createDataFrame([(1, "p"), (2, "q"), (3, "other")], schema).selectExpr(
        "id", "prompt", "CAST(id AS STRING) AS request_id", "'h' AS request_hash",
        "'c' AS config_hash",
    )  # fmt: skip
    found = recognise(frame, answers, ["id", "prompt"], "c")
    assert found is not None
    try:
        # A second copy of (2, "q"), beyond the one the sink holds, and (3, "r"), which it lacks.
        assert sorted(found.rest.collect()) == [(2, "q"), (3, "r")]
        joins = [
            node for node in plan_nodes(found.kept[0]._jdf.queryExecution().executedPlan())
            if node.nodeName().endswith("Join") and node.joinType().toString() == "LeftAnti"
        ]  # fmt: skip
        assert joins
        for join in joins:
            output = join.right().output()
            assert sorted(output.apply(i).name() for i in range(output.size())) == KEYS
    finally:
        release(found.kept)


def test_values_that_differ_in_where_a_null_is_are_two_requests(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    """Spark's hash skips a null: (5, null, "q") and (null, 5, "q") must not hash alike. A row
    with no id and max_tokens 5 is new beside the answered row of id 5 (no max_tokens)."""
    summary = rerun(spark, echo, tmp_path, "id int, max_tokens int, q string",
                    [(5, None, "q")], [(None, 5, "q")],
                    source={"prompt_column": None, "template": "{q}",
                            "max_tokens_column": "max_tokens"})  # fmt: skip
    assert (summary.recognised, summary.rows, echo.stats()["requests_total"]) == (0, 1, 1)
    assert sink_rows(spark, tmp_path / "out").count() == 2


def test_conversations_are_recognised_turn_by_turn(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    """A messages column (an array of structs) is hashed element by element: the same
    conversation is recognised, one with a turn added is another request."""
    one = [("user", "Hi there"), ("assistant", "Hello"), ("user", "count one two")]
    two = [("user", "solo")]
    schema = "id long, conv array<struct<role:string,content:string>>"
    summary = rerun(spark, echo, tmp_path, schema,
                    [(1, one), (2, two)], [(1, one), (2, [*two, ("user", "and more")])],
                    source={"prompt_column": None, "messages_column": "conv"})  # fmt: skip
    assert (summary.recognised, summary.changes["changed"]) == (1, 1)
    assert echo.stats()["requests_total"] == 1


def plan_nodes(node: Any) -> Any:
    """Every node of a physical plan (a py4j SparkPlan), into adaptive plans and cached ones."""
    yield node
    name = node.nodeName()
    if name == "AdaptiveSparkPlan":
        yield from plan_nodes(node.executedPlan())
    elif name == "InMemoryTableScan":
        yield from plan_nodes(node.relation().cachedPlan())
    elif name.endswith("QueryStage"):
        yield from plan_nodes(node.plan())
    children = node.children()
    for i in range(children.size()):
        yield from plan_nodes(children.apply(i))
