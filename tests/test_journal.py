"""In-flight answers: written as a task goes, read back by a retried attempt, never in the way."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.core.chat import ChatRequest, Completion, Message, RowResult
from pipeline.core.tools import ToolCall
from pipeline.http import journal as journal_module
from pipeline.http.engine import Engine
from pipeline.http.journal import (
    AnswerJournal,
    arrow_location,
    decode_result,
    encode_result,
    read_answers,
    wait_for_older,
)
from pipeline.serving.process import LocalEndpoint
from tests.polling import wait_until
from tests.test_engine import client_settings

DEADLINE_S = 10.0


def answer(i: int, *, attempts: int = 1) -> RowResult:
    completion = Completion(f"answer {i}", "stop", 7, 3 + i, 10 + i, "echo", f"resp-{i}")
    return RowResult(
        f"r{i}", "ok", completion, attempts=attempts, latency_ms=12.5, parsed={"n": [i, "é"]},
        request_hash=f"h{i}",
    )  # fmt: skip


def request(i: int) -> ChatRequest:
    return ChatRequest(f"r{i}", (Message("user", f"prompt {i}"),), 16, None, f"h{i}")


def files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def test_a_result_reads_back_as_it_was_written() -> None:
    called = Completion(
        "", "tool_calls", 9, 5, 14, "echo", "resp-t", (ToolCall("lookup", '{"q":"é"}', "c1"),
        ToolCall("add", "{}")), reasoning="first, look it up", reasoning_tokens=2,
    )  # fmt: skip
    for result in (
        answer(3, attempts=2),
        RowResult("x", "error", error="timeout", attempts=4),
        RowResult("t", "ok", called, http_status=200, attempts=1, reused=True),
    ):
        assert decode_result(encode_result(result)) == result


def test_answers_written_on_close_read_back_by_hash_marked_reused(tmp_path: Path) -> None:
    folder = tmp_path / "run=a" / "chunk=0" / "part=1"
    with AnswerJournal(str(folder), 7, flush_s=3600) as journal:
        for i in range(3):
            journal.record(answer(i))
    assert [p.name for p in files(folder)] == ["attempt7-000001.parquet"]
    found = read_answers(str(folder))
    assert found == {f"h{i}": replace(answer(i), reused=True) for i in range(3)}


def test_a_file_every_flush_interval_without_waiting_for_close(tmp_path: Path) -> None:
    with AnswerJournal(str(tmp_path), 1, flush_s=0.05) as journal:
        journal.record(answer(1))
        wait_until(lambda: len(files(tmp_path)) == 1, "the first write", DEADLINE_S)
        journal.record(answer(2))
        wait_until(lambda: len(files(tmp_path)) == 2, "the second write", DEADLINE_S)
    assert set(read_answers(str(tmp_path))) == {"h1", "h2"}


def test_a_full_buffer_is_written_before_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "FLUSH_ROWS", 5)
    with AnswerJournal(str(tmp_path), 1, flush_s=3600) as journal:
        for i in range(5):
            journal.record(answer(i))
        wait_until(lambda: len(files(tmp_path)) == 1, "a write of the full buffer", DEADLINE_S)
        assert len(read_answers(str(tmp_path))) == 5


def test_half_written_files_and_missing_folders_are_skipped(tmp_path: Path) -> None:
    assert read_answers(str(tmp_path / "never-written")) == {}
    with AnswerJournal(str(tmp_path), 1, flush_s=3600) as journal:
        journal.record(answer(1))
    (tmp_path / ".attempt2-000001.parquet.tmp").write_bytes(b"PAR1 cut short")
    assert set(read_answers(str(tmp_path))) == {"h1"}


def test_storage_that_fails_is_logged_once_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING), AnswerJournal(
        str(blocker / "inside"), 1, flush_s=0.01
    ) as journal:
        journal.record(answer(1))
        wait_until(lambda: "cannot keep in-flight answers" in caplog.text, "the warning", 10)
        journal.record(answer(2))
    assert caplog.text.count("cannot keep in-flight answers") == 1


def test_an_older_attempt_still_running_stops_once_a_newer_one_starts(
    echo: LocalEndpoint, tmp_path: Path
) -> None:
    with AnswerJournal(str(tmp_path), 5, flush_s=0.02) as older:
        with Engine(client_settings(echo, concurrency=2), journal=older) as engine:
            assert engine.submit([request(1)]).result(timeout=30)[0].status == "ok"
            with AnswerJournal(str(tmp_path), 9, flush_s=0.02) as newer:
                wait_until(lambda: older.superseded, "the older attempt to notice", DEADLINE_S)
                late = engine.submit([request(2), request(3)]).result(timeout=30)
                assert not newer.superseded
    assert echo.stats()["requests_total"] == 1  # nothing after the newer attempt started
    assert [r.status for r in late] == ["error", "error"]
    assert all("superseded" in (r.error or "") for r in late)


class FakeTime:
    """Wall time that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = time.time()
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_newer_attempt_reads_only_after_the_older_one_stopped(tmp_path: Path) -> None:
    older = AnswerJournal(str(tmp_path), 3, flush_s=0.05).__enter__()
    older.record(answer(1))

    def stop_when_told() -> None:  # what the older attempt's task does once superseded
        wait_until(lambda: older.superseded, "the older attempt to notice", DEADLINE_S)
        older.record(answer(2))  # its last request in flight, answered
        older.close()

    stopper = threading.Thread(target=stop_when_told)
    stopper.start()
    with AnswerJournal(str(tmp_path), 8, flush_s=0.05):
        assert wait_for_older(str(tmp_path), 8, flush_s=0.05)
        assert set(read_answers(str(tmp_path))) == {"h1", "h2"}
    stopper.join()


def test_a_gone_attempt_is_not_waited_for_and_a_stuck_one_only_so_long(tmp_path: Path) -> None:
    gone = tmp_path / "attempt2.started"
    gone.touch()
    long_ago = time.time() - 60
    os.utime(gone, (long_ago, long_ago))
    fake = FakeTime()
    assert wait_for_older(str(tmp_path), 5, flush_s=1.0, clock=fake.clock, sleep=fake.sleep)
    assert fake.slept == []

    alive = tmp_path / "attempt4-000001.parquet"  # running: writes all the time, never stops
    alive.touch()

    def sleep_while_it_writes(seconds: float) -> None:
        fake.sleep(seconds)
        os.utime(alive, (fake.now, fake.now))

    assert not wait_for_older(
        str(tmp_path), 5, flush_s=1.0, clock=fake.clock, sleep=sleep_while_it_writes
    )
    assert sum(fake.slept) == pytest.approx(journal_module.WAIT_FLUSHES * 1.0)
    (tmp_path / "attempt4.stopped").touch()
    assert wait_for_older(str(tmp_path), 5, flush_s=1.0, clock=fake.clock, sleep=fake.sleep)


def test_paths_as_spark_names_them_open_where_pyarrow_finds_them(tmp_path: Path) -> None:
    assert arrow_location("dbfs:/mnt/answers_inflight")[1] == "/dbfs/mnt/answers_inflight"
    assert arrow_location(f"file:{tmp_path}")[1] == str(tmp_path)
    with pytest.raises(ValueError, match="nosuch://bucket/x"):
        arrow_location("nosuch://bucket/x")


def test_known_answers_are_not_sent_and_paid_ones_are_recorded(
    echo: LocalEndpoint, tmp_path: Path
) -> None:
    known = {"h0": replace(answer(0, attempts=2), reused=True)}
    with AnswerJournal(str(tmp_path), 2, flush_s=3600) as journal:
        with Engine(client_settings(echo, concurrency=2), known=known, journal=journal) as engine:
            results = engine.submit([request(0), request(1), request(2)]).result(timeout=30)
    assert echo.stats()["requests_total"] == 2  # r0 was answered by the earlier attempt
    assert results[0] == known["h0"] and results[0].attempts == 2
    assert [r.status for r in results] == ["ok", "ok", "ok"]
    assert set(read_answers(str(tmp_path))) == {"h1", "h2"}  # what this attempt paid
