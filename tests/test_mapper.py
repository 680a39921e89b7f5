"""Output schema and result columns, without Spark."""

import json

import pandas as pd
import pytest
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

from pipeline.core.chat import ChatRequest, Completion, EncodedRequest, RowResult
from pipeline.core.config import EndpointConfig, RequestConfig
from pipeline.core.errors import ConfigError
from pipeline.core.io_config import SourceConfig
from pipeline.core.prompts import RequestBuilder
from pipeline.spark.columns import RESULT_COLUMNS, output_schema
from pipeline.spark.mapper import carried_items, make_key_mapper, with_results

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


def test_a_keyed_row_carries_the_body_the_client_would_send() -> None:
    source = SourceConfig(path="/unused", id_column="id", prompt_column="q",
                          max_tokens_column="budget")  # fmt: skip
    request = RequestConfig(max_tokens=16, temperature=0.5, extra={"top_p": 0.9})
    endpoint = EndpointConfig(name="chat", host="http://127.0.0.1:1", api="chat_completions")
    frame = pd.DataFrame({"id": [1, 2], "q": ["Olá, mundo \u2603".encode(), None],
                          "budget": [7, 9]})  # fmt: skip
    keyed = next(make_key_mapper(source, request, endpoint)([frame]))
    sent, rejected = carried_items(keyed)
    built = RequestBuilder(source, request, endpoint).build({"id": 1, "q": "Olá, mundo \u2603",
                                                             "budget": 7})  # fmt: skip
    assert isinstance(sent, EncodedRequest) and isinstance(built, ChatRequest)
    assert sent.body == endpoint.wire.encoded_body(
        built, endpoint, endpoint.wire.extra_fields(request)
    )
    assert json.loads(sent.body)["max_tokens"] == 7
    assert (sent.request_id, sent.request_hash) == ("1", built.request_hash)
    assert (sent.prompt_tokens, sent.output_tokens, sent.images) == (
        built.estimated_prompt_tokens(),
        built.estimated_output_tokens(),
        0,
    )
    assert sent.estimated_tokens() == built.estimated_tokens()
    assert isinstance(rejected, RowResult) and rejected.status == "error"
    assert rejected.error is not None and "'q' is null" in rejected.error
    assert rejected.request_hash == keyed["request_hash"][1]
