"""Output schema and result columns, without Spark."""

import pandas as pd
import pytest
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

from pipeline.core.chat import Completion, RowResult
from pipeline.core.errors import ConfigError
from pipeline.spark.columns import RESULT_COLUMNS, output_schema
from pipeline.spark.mapper import with_results

INPUT = StructType([StructField("id", LongType()), StructField("prompt", StringType())])


def test_output_schema_is_input_then_result_columns() -> None:
    schema = output_schema(INPUT)
    assert schema.fieldNames() == ["id", "prompt", *RESULT_COLUMNS]
    assert schema["attempts"].dataType == IntegerType()
    assert all(schema[name].nullable for name in RESULT_COLUMNS)


def test_input_column_with_a_result_name_is_refused() -> None:
    clashing = StructType([*INPUT.fields, StructField("status", StringType())])
    with pytest.raises(ConfigError, match="'status'"):
        output_schema(clashing)


def test_results_are_appended_row_for_row() -> None:
    frame = pd.DataFrame({"id": [7, 8], "prompt": ["a", None]}, index=[10, 11])
    done = Completion("A", "stop", 1, 1, 2, "echo", "c1")
    results = [
        RowResult("7", "ok", completion=done, http_status=200, attempts=1, latency_ms=1.5),
        RowResult("8", "error", error="invalid_input: prompt column 'prompt' is null"),
    ]
    out = with_results(frame, results)
    assert list(out.columns) == ["id", "prompt", *RESULT_COLUMNS]
    assert out["completion"].tolist() == ["A", None]
    assert out["total_tokens"].tolist() == [2, pd.NA]
    assert out["attempts"].tolist() == [1, 0]
    assert out["status"].tolist() == ["ok", "error"]


def test_result_count_mismatch_is_loud() -> None:
    with pytest.raises(RuntimeError, match="1 results for 2 rows"):
        with_results(pd.DataFrame({"id": [1, 2]}), [RowResult("1", "ok")])
