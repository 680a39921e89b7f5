"""Which runs a sink can take, decided from Spark types alone (no session needed)."""

from __future__ import annotations

import pytest
from pyspark.sql.types import (
    ArrayType,
    DataType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from pipeline.core.errors import ConfigError
from pipeline.spark.sink_schema import added_columns, check_appendable, type_changes

TEXT, INT, LONG = StringType(), IntegerType(), LongType()


def schema(*fields: tuple[str, DataType]) -> StructType:
    return StructType([StructField(name, dtype) for name, dtype in fields])


def test_new_and_dropped_columns_can_be_appended() -> None:
    old = schema(("id", LONG), ("prompt", TEXT), ("completion", TEXT))
    new = schema(("id", LONG), ("prompt", TEXT), ("request_hash", TEXT), ("completion", TEXT))
    assert type_changes(old, new) == []
    assert type_changes(new, old) == []
    assert [field.name for field in added_columns(old, new)] == ["request_hash"]


def test_changed_types_are_named_with_both_types() -> None:
    old = schema(("id", TEXT), ("parsed", TEXT), ("meta", schema(("a", INT), ("b", TEXT))),
                 ("tags", ArrayType(TEXT)))  # fmt: skip
    new = schema(("ID", LONG), ("parsed", schema(("label", TEXT),)),
                 ("meta", schema(("a", LONG), ("c", INT))), ("tags", ArrayType(INT)))  # fmt: skip
    assert type_changes(old, new) == [
        "ID (sink: string, now: bigint)",
        "parsed (sink: string, now: struct<label:string>)",
        "meta.a (sink: int, now: bigint)",
        "tags[] (sink: string, now: int)",
    ]


def test_a_refusal_names_the_sink_key_and_every_problem() -> None:
    old = schema(("id", TEXT), ("completion", TEXT), ("n", INT))
    new = schema(("id", LONG), ("completion", TEXT), ("n", TEXT), ("request_hash", TEXT))
    with pytest.raises(ConfigError) as caught:
        check_appendable(old, new, "main.s.answers")
    assert caught.value.key == "sink"
    message = str(caught.value)
    assert "main.s.answers cannot take this run's rows" in message
    assert "id (sink: string, now: bigint); n (sink: int, now: string)" in message
    check_appendable(old, schema(("id", TEXT), ("request_hash", TEXT)), "out")  # added: fine


def test_added_columns_are_the_new_fields_whatever_their_case() -> None:
    old = schema(("id", TEXT), ("Completion", TEXT))
    new = schema(("ID", TEXT), ("completion", TEXT), ("reasoning", TEXT), ("n", INT))
    assert [f.simpleString() for f in added_columns(old, new)] == ["reasoning:string", "n:int"]
