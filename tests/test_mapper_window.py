"""The mapInPandas function over real pandas batches and the real endpoint, without Spark."""

from __future__ import annotations

import pandas as pd

from pipeline.core.config import EndpointConfig, LimitsConfig, RequestConfig, SourceConfig
from pipeline.core.secrets import Secret
from pipeline.http.settings import ClientSettings
from pipeline.serving.process import LocalEndpoint
from pipeline.spark.mapper import TaskPlan, make_batch_mapper, make_key_mapper
from tests.conftest import ENDPOINT_NAME, TOKEN


def plan(echo: LocalEndpoint, concurrency: int) -> TaskPlan:
    client = ClientSettings(
        endpoint=EndpointConfig(name=ENDPOINT_NAME, host=echo.url),
        limits=LimitsConfig(concurrency=concurrency),
        token=Secret(TOKEN),
    )
    return TaskPlan(REQUEST, client)


SOURCE = SourceConfig(path="unused", id_column="id", prompt_column="prompt")
REQUEST = RequestConfig(max_tokens=8)


def frames(batches: int, rows: int) -> list[pd.DataFrame]:
    """Keyed batches, as the answering pass gets them (see `make_key_mapper`)."""
    raw = [
        pd.DataFrame(
            {"id": range(b * rows, (b + 1) * rows), "prompt": [f"p {b} {i}" for i in range(rows)]}
        )
        for b in range(batches)
    ]
    endpoint = EndpointConfig(name=ENDPOINT_NAME, host="http://127.0.0.1:9")
    return list(make_key_mapper(SOURCE, REQUEST, endpoint)(iter(raw)))


def test_window_spans_batch_boundaries(echo: LocalEndpoint) -> None:
    # Batches of 4 rows, 8 slots: a window that waited for each batch would peak at 4.
    echo.control(latency_s=0.2)
    out = list(make_batch_mapper(plan(echo, concurrency=8))(iter(frames(batches=6, rows=4))))
    assert [len(f) for f in out] == [4] * 6
    assert echo.stats()["peak_in_flight"] == 8


def test_every_row_comes_out_once_in_batch_order(echo: LocalEndpoint) -> None:
    out = pd.concat(make_batch_mapper(plan(echo, concurrency=3))(iter(frames(batches=7, rows=5))))
    assert out["id"].tolist() == list(range(35))
    assert out["request_id"].tolist() == [str(i) for i in range(35)]
    assert (out["status"] == "ok").all()
    assert out["completion"].tolist() == out["prompt"].tolist()
