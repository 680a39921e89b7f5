"""The per-task engine: a private loop thread, one queue across batches, nothing lost."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.control.budget import JobBudget
from pipeline.control.server import DriverServer
from pipeline.core.chat import ChatRequest, Message, RowResult
from pipeline.core.config import EndpointConfig, LimitsConfig
from pipeline.core.secrets import Secret
from pipeline.http import engine as engine_module
from pipeline.http.engine import Engine
from pipeline.http.settings import ClientSettings
from pipeline.serving.process import LocalEndpoint
from tests.conftest import ENDPOINT_NAME, TOKEN
from tests.polling import wait_until


def client_settings(echo: LocalEndpoint, concurrency: int) -> ClientSettings:
    return ClientSettings(
        endpoint=EndpointConfig(name=ENDPOINT_NAME, host=echo.url),
        limits=LimitsConfig(concurrency=concurrency, backoff_initial_s=0.001, backoff_max_s=0.01),
        token=Secret(TOKEN),
    )


def request(i: int) -> ChatRequest:
    return ChatRequest(f"r{i}", (Message("user", f"prompt number {i}"),), 16, None)


def test_batches_come_back_in_order_with_rejected_rows_in_place(echo: LocalEndpoint) -> None:
    rejected = RowResult("bad", "error", error="invalid_input: prompt column 'q' is null")
    batches: list[list[ChatRequest | RowResult]] = [
        [request(i) for i in range(b * 10, b * 10 + 10)] for b in range(5)
    ]
    batches[2][3] = rejected
    with Engine(client_settings(echo, concurrency=4)) as engine:
        futures = [engine.submit(batch) for batch in batches]
        results = [future.result(timeout=30) for future in futures]
    for batch, answered in zip(batches, results, strict=True):
        assert [r.request_id for r in answered] == [i.request_id for i in batch]
    assert results[2][3] is rejected
    ok = [r for batch in results for r in batch if r is not rejected]
    assert all(r.status == "ok" for r in ok)
    assert ok[0].completion is not None and ok[0].completion.text == "prompt number 0"
    stats = echo.stats()
    assert stats["requests_total"] == 49  # the rejected row never reached the endpoint
    assert stats["peak_in_flight"] <= 4


def test_a_task_whose_input_ended_stops_counting_on_the_budget_before_it_closes(
    echo: LocalEndpoint,
) -> None:
    # So the next task running books as the oldest while this one's Spark task still ends.
    budget = JobBudget(60_000, None, adaptive=False)
    with DriverServer(budget, advertise="127.0.0.1") as driver:
        settings = replace(client_settings(echo, concurrency=4), budget_url=driver.url)
        with Engine(settings) as engine:
            assert len(engine.submit([request(i) for i in range(20)]).result(timeout=30)) == 20
            assert budget.tasks_running == 1
            engine.input_ended()
            wait_until(lambda: budget.tasks_running == 0, "the task's ending ask", 10.0)


def test_batch_of_only_rejected_rows_needs_no_request(echo: LocalEndpoint) -> None:
    rejected = RowResult("bad", "error", error="invalid_input: x")
    with Engine(client_settings(echo, concurrency=2)) as engine:
        assert engine.submit([rejected]).result(timeout=5) == [rejected]
        assert engine.submit([]).result(timeout=5) == []
    assert echo.stats()["requests_total"] == 0


def test_identical_requests_are_sent_once_and_memory_is_bounded(
    echo: LocalEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "DEDUPE_MEMORY", 3)

    def asking(key: int, row: int) -> ChatRequest:
        prompt = (Message("user", f"prompt number {key}"),)
        return ChatRequest(f"row{row}", prompt, 16, None, request_hash=f"k{key}")

    # Keys 0 0 0 1 1 | 2 3 4 5 | 0: key 0 comes back after 4 other keys, beyond the memory.
    batches = [[asking(k, r) for r, k in enumerate([0, 0, 0, 1, 1])],
               [asking(k, 10 + k) for k in (2, 3, 4, 5)], [asking(0, 20)]]  # fmt: skip
    with Engine(client_settings(echo, concurrency=4), dedupe=True) as engine:
        results = [engine.submit(batch).result(timeout=30) for batch in batches]
    first = results[0]
    assert [r.request_id for r in first] == [f"row{i}" for i in range(5)]
    assert [r.attempts for r in first] == [1, 0, 0, 1, 0]  # copies sent nothing
    assert first[1].completion == first[0].completion and first[1].latency_ms is None
    assert results[2][0].attempts == 1  # forgotten: sent again, never wrong
    assert echo.stats()["requests_total"] == 2 + 4 + 1
