"""`make bench`: the pipeline against the local endpoint, every ratio measured in this one run.

Starts `python -m pipeline.serving --model echo` in the configuration each figure needs, runs the
job on a local Spark session, and reads what the endpoint saw from its `/stats` (rates are
requests over the time between the first and the last request the endpoint received). Prints one
table and writes the same figures to `data/bench/latest.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Self

import pandas as pd
import requests
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from pipeline.core.loader import config_from_dict
from pipeline.serving.process import LocalEndpoint
from pipeline.spark.job import run_job
from pipeline.spark.session import spark_session
from pipeline.spark.summary import RunSummary

ROOT = Path(__file__).resolve().parent.parent
TOKEN_ENV, TOKEN = "BENCH_TOKEN", "bench-token"
ENDPOINT = "echo"
TASKS = 2
# Spark's defaults otherwise: Python workers are reused from task to task, as on Databricks.
SPARK_CONF = {
    "spark.master": f"local[{TASKS}]",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": str(TASKS),
    "spark.default.parallelism": str(TASKS),
    "spark.driver.memory": "2g",
}


@dataclass
class Figure:
    name: str
    measured: float | None
    target: float
    higher_is_better: bool
    detail: str

    @property
    def passed(self) -> bool | None:
        if self.measured is None:
            return None
        if self.higher_is_better:
            return self.measured >= self.target
        return self.measured <= self.target

    def row(self) -> str:
        measured = "n/a" if self.measured is None else f"{self.measured:.3g}"
        sign = ">=" if self.higher_is_better else "<="
        verdict = {True: "yes", False: "NO", None: "not built"}[self.passed]
        return f"| {self.name} | {measured} | {sign} {self.target:g} | {verdict} | {self.detail} |"


class Bench:
    def __init__(self, spark: SparkSession, workdir: Path, scale: float) -> None:
        self.spark = spark
        self.workdir = workdir
        self.scale = scale
        self._runs = 0

    def restart(self, conf: dict[str, str]) -> None:
        """A new Spark session with `conf` over `SPARK_CONF` (fresh Python workers)."""
        self.spark.stop()
        self.spark = spark_session("batch-chat-bench", {**SPARK_CONF, **conf})
        self.spark.sparkContext.setLogLevel("ERROR")

    def new_path(self, name: str) -> Path:
        """A path in the bench's folder that nothing wrote yet (a step may run twice)."""
        self._runs += 1
        return self.workdir / f"{name}_{self._runs}"

    def rows(self, n: int) -> int:
        return max(100, int(n * self.scale))

    def prompts(self, rows: int) -> str:
        path = self.workdir / f"prompts_{rows}"
        if not path.exists():
            prompt_rows(self.spark, 0, rows).repartition(TASKS).write.parquet(str(path))
        return str(path)

    def run(self, endpoint: LocalEndpoint, rows: int, **settings: Any) -> RunSummary:
        """The job over `rows` prompts, as `config` sets it up."""
        raw = self.config(endpoint, rows, **settings)
        return run_job(config_from_dict(raw, env={}), self.spark, env={TOKEN_ENV: TOKEN})

    def config(
        self,
        endpoint: LocalEndpoint,
        rows: int,
        *,
        tasks: int | None = None,
        source: str | None = None,
        sink: dict[str, Any] | None = None,
        system_prompt: str | None = None,
        **limits: Any,
    ) -> dict[str, Any]:
        """The job's config (what a config file holds) over `rows` prompts (or the prompts at
        `source`), in `tasks` Spark tasks (None: one per slot); `sink`: sink settings over the
        default (a new Parquet folder, overwritten, in one chunk)."""
        self._runs += 1
        return {
            "source": {"path": source or self.prompts(rows), "id_column": "id",
                       "prompt_column": "prompt", "partitions": tasks,
                       "system_prompt": system_prompt},
            "endpoint": {"name": ENDPOINT, "host": endpoint.url, "token_env": TOKEN_ENV},
            "request": {"max_tokens": MAX_TOKENS},
            "limits": {"backoff_initial_s": 0.05, "max_attempts": 10, **limits},
            "sink": {"path": str(self.workdir / f"out_{self._runs}"), "format": "parquet",
                     "mode": "overwrite", **(sink or {})},
        }  # fmt: skip


def prompt_rows(spark: SparkSession, start: int, end: int) -> DataFrame:
    """Prompt rows with ids `start` to `end` (excluded)."""
    return spark.range(start, end).select(
        F.col("id"), F.concat(F.lit("question number "), F.col("id")).alias("prompt")
    )


@contextmanager
def endpoint(*flags: str) -> Iterator[LocalEndpoint]:
    args = ("--model", "echo", "--endpoint-name", ENDPOINT, "--token-env", TOKEN_ENV, *flags)
    with LocalEndpoint(*args, env={TOKEN_ENV: TOKEN}) as server:
        yield server


def served_rate(stats: dict[str, Any], count: int | None = None) -> float:
    """`count` (default: the requests) per second, between the first and the last request the
    endpoint saw."""
    span = (stats["last_request_at"] or 0.0) - (stats["first_request_at"] or 0.0)
    total = stats["requests_total"] if count is None else count
    return total / span if span > 0 else 0.0


def first_request_s(stats: dict[str, Any], started: float) -> float:
    """Seconds from `started` (`time.time()`) to the first request the endpoint saw (0 when it
    saw none)."""
    return (stats["first_request_at"] or started) - started


WARM_UP_ROWS = 5_000


def throughput(bench: Bench) -> list[Figure]:
    rows, udf_rows = bench.rows(30_000), bench.rows(10_000)
    ours: list[float] = []
    adaptive: list[float] = []
    bare: list[float] = []
    # CPU per request of the job (adaptive off) and of the bare clients, run by run.
    cpu: dict[str, list[dict[str, float]]] = {"job": [], "adaptive": [], "bare": []}
    sampler = CpuSampler()

    def job(server: LocalEndpoint, *, adaptive_on: bool) -> None:
        server.reset()
        bench.run(server, rows, concurrency=64, adaptive=adaptive_on)
        stats = server.stats()
        (adaptive if adaptive_on else ours).append(served_rate(stats))
        cpu["adaptive" if adaptive_on else "job"].append(sampler.per_request(stats))

    def side_by_side(server: LocalEndpoint, adaptive_first: bool) -> None:
        # The job with adaptive off and on (the default: on an endpoint with no limit there is
        # nothing to find, nothing to pay), then the bare clients at once: this machine's speed
        # moves from one minute to the next (the bare clients alone ran anywhere from 4,700/s
        # to 9,200/s in one hour), so each set is run back to back, twice (adaptive first in
        # one), and each figure is a ratio of means.
        for adaptive_on in (adaptive_first, not adaptive_first):
            job(server, adaptive_on=adaptive_on)
        server.reset()
        bare_aiohttp(f"{server.url}/serving-endpoints/{ENDPOINT}/invocations", rows)
        stats = server.stats()
        bare.append(served_rate(stats))
        cpu["bare"].append(sampler.per_request(stats))

    with sampler, endpoint() as server:
        # The session's first job pays for JVM warm-up and new Python workers: not measured.
        bench.run(server, bench.rows(WARM_UP_ROWS), concurrency=64)
        side_by_side(server, adaptive_first=False)
        server.reset()
        # Its rate is as steady over a third of the rows (11 s at its ~900/s here).
        thread_pool_udf(bench, server, udf_rows, threads=64)
        baseline = served_rate(server.stats())
        side_by_side(server, adaptive_first=True)
    with noop_server() as url:
        ceiling = bare_aiohttp(url, rows)
    off, on, clients = (sum(rates) / len(rates) for rates in (ours, adaptive, bare))
    pairs = ", ".join(f"{a:.0f}/s vs {b:.0f}/s" for a, b in zip(ours, bare, strict=True))
    cpu_detail = cpu_bound(cpu["job"], cpu["bare"], 0.90)
    spent = [mean_cpu(cpu[name]) for name in ("adaptive", "job")]
    adaptive_cpu = (
        "; CPU per request, us: " + " vs ".join(
            f"{cpu_total(m):.0f} "
            f"(Python workers {m['Python workers']:.0f})" for m in spent)
        if all(spent) else ""
    )  # fmt: skip
    either = ", ".join(f"{a:.0f}/s vs {b:.0f}/s" for a, b in zip(adaptive, ours, strict=True))
    return [
        Figure("requests/s vs bare aiohttp, instant model", off / clients, 0.90, True,
               f"{off:.0f}/s, {rows} rows, {TASKS} tasks x 64 in flight; {TASKS} bare aiohttp "
               f"client processes (no Spark, no pipeline) {clients:.0f}/s on the same endpoint "
               f"(each pair back to back: {pairs}), {ceiling:.0f}/s on a no-op aiohttp server; "
               f"{cpu_detail}"),
        Figure("requests/s vs thread-pool UDF", off / baseline, 3, True,
               f"pandas UDF + requests + ThreadPoolExecutor(64): {baseline:.0f}/s, "
               f"{udf_rows} rows"),
        Figure("adaptive on vs off, unlimited instant endpoint", on / off, 0.95, True,
               f"{on:.0f}/s vs {off:.0f}/s (each pair back to back: {either}){adaptive_cpu}"),
    ]  # fmt: skip


def mean_cpu(runs: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each of `CpuSampler.per_request`'s figures over `runs` (those it gave)."""
    runs = [run for run in runs if run]
    return {key: statistics.fmean(run[key] for run in runs) for key in runs[0]} if runs else {}


def cpu_total(spent: dict[str, float]) -> float:
    """Microseconds of CPU per request over every process (`CpuSampler.per_request`)."""
    return sum(value for key, value in spent.items() if key != "cores")


def cpu_bound(
    job: list[dict[str, float]], bare: list[dict[str, float]], target: float
) -> str:
    """What the cores allow the job's requests/s against the bare clients', from the CPU per
    request each run took (`CpuSampler.per_request`): at the same busy cores, the bare
    clients' CPU per request over the job's; and what the job's own side (all but the
    endpoint) would have to take to reach `target`."""
    mean = {"job": mean_cpu(job), "bare": mean_cpu(bare)}
    if not mean["job"] or not mean["bare"]:
        return "no CPU figures on this system (Linux's /proc)"
    total = {name: cpu_total(m) for name, m in mean.items()}
    bound = total["bare"] / total["job"]
    allowed = total["bare"] / target - mean["job"]["endpoint"]

    def parts(m: dict[str, float]) -> str:
        return " + ".join(f"{k} {v:.0f}" for k, v in m.items() if k != "cores" and v >= 0.5)

    return (
        f"CPU per request, us (first to last request, mean of {len(job)} and {len(bare)} runs): "
        f"job {parts(mean['job'])} = {total['job']:.0f} ({mean['job']['cores']:.2f} cores "
        f"busy); bare clients {parts(mean['bare'])} = {total['bare']:.0f} "
        f"({mean['bare']['cores']:.2f} cores busy). At the same busy cores the job reaches at "
        f"most {bound:.2f} of the bare clients' rate; {target} would need all but the endpoint "
        f"within {allowed:.0f} us a request (the bare clients take "
        f"{total['bare'] - mean['bare']['endpoint']:.0f})"
    )


def bare_aiohttp(url: str, rows: int) -> float:
    """Post `rows` requests from TASKS processes, 64 in flight each; requests per second."""
    per_process = rows // TASKS
    with ProcessPoolExecutor(TASKS, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_warm, range(TASKS)))  # interpreters started and aiohttp imported
        started = time.monotonic()
        list(pool.map(_post_all, [url] * TASKS, [per_process] * TASKS))
        return per_process * TASKS / (time.monotonic() - started)


def _warm(_: int) -> None:
    import aiohttp  # noqa: F401


def _post_all(url: str, count: int, in_flight: int = 64) -> None:
    import aiohttp

    async def post_all() -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        connector = aiohttp.TCPConnector(limit=in_flight)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            numbers = iter(range(count))

            async def worker() -> None:
                for n in numbers:
                    body = {"messages": [{"role": "user", "content": f"question number {n}"}],
                            "max_tokens": MAX_TOKENS}  # fmt: skip
                    async with session.post(url, json=body) as reply:
                        await reply.read()

            await asyncio.gather(*(worker() for _ in range(in_flight)))

    asyncio.run(post_all())


@contextmanager
def noop_server() -> Iterator[str]:
    """An aiohttp server answering every POST with a fixed chat completion, in its own process."""
    ready = multiprocessing.get_context("spawn").Queue()
    process = multiprocessing.get_context("spawn").Process(target=_serve_noop, args=(ready,))
    process.start()
    try:
        yield f"http://127.0.0.1:{ready.get(timeout=60)}/noop"
    finally:
        process.terminate()
        process.join()


def _serve_noop(ready: Any) -> None:
    from aiohttp import web

    answer = {"choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "ok"}}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(answer)

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/noop", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ready.put(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(serve())


def thread_pool_udf(bench: Bench, server: LocalEndpoint, rows: int, threads: int) -> None:
    """The pattern of Databricks' batch-inference notebook: each row posted with `requests`."""
    answer = thread_pool_answers(
        f"{server.url}/serving-endpoints/{ENDPOINT}/invocations",
        TOKEN,
        threads,
        max_tokens=MAX_TOKENS,
    )
    frame = bench.spark.read.parquet(bench.prompts(rows)).repartition(TASKS)
    frame.withColumn("answer", answer("prompt")).write.format("noop").mode("overwrite").save()


def thread_pool_answers(url: str, token: str, threads: int, *, max_tokens: int) -> Any:
    """A pandas UDF answering each prompt with a `requests` post, `threads` at a time."""
    headers = {"Authorization": f"Bearer {token}"}

    @pandas_udf("string")  # type: ignore[call-overload]
    def answer(prompts: pd.Series) -> pd.Series:
        def post(prompt: str) -> str:
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
            reply = requests.post(url, json=body, headers=headers, timeout=60)
            return str(reply.json()["choices"][0]["message"]["content"])

        with ThreadPoolExecutor(threads) as pool:
            return pd.Series(list(pool.map(post, prompts)))

    return answer


def udf_job(url: str, source: str, out: str) -> None:
    """The thread-pool UDF as a user runs it (`benchmark.py udf-job URL SOURCE OUT`): its own
    session, the Delta source, a Delta table written (the token from TOKEN_ENV)."""
    spark = spark_session("thread-pool-udf")
    answer = thread_pool_answers(url, os.environ[TOKEN_ENV], 64, max_tokens=32)
    frame = spark.read.format("delta").load(source)
    frame.withColumn("answer", answer("prompt")).write.format("delta").save(out)


def latency_bound(bench: Bench) -> list[Figure]:
    """Adaptive mode (the default) where latency bounds the rate: it must not hold it back."""
    figures = []
    concurrency = 64
    for latency in (0.2, 0.5):
        bound = TASKS * concurrency / latency
        rows = bench.rows(int(bound * 20))
        with endpoint("--latency-s", str(latency)) as server:
            bench.run(server, rows, concurrency=concurrency)
            rate = served_rate(server.stats())
        figures.append(Figure(
            f"latency-bound efficiency, {latency} s", rate / bound, 0.95, True,
            f"{rate:.0f}/s vs {TASKS}x{concurrency}/{latency}s = {bound:.0f}/s; adaptive on",
        ))  # fmt: skip
    return figures


# The endpoint admits RATE_PER_S requests in any one-second window.
RATE_PER_S = 100
LIMITED = ("--requests-per-minute", str(RATE_PER_S), "--window-s", "1")


def limited_run(
    bench: Bench,
    name: str,
    flags: tuple[str, ...],
    targets: tuple[float, float] = (0.90, 0.03),
    **limits: Any,
) -> list[Figure]:
    """Achieved rate over the endpoint's limit (at least `targets[0]`) and the share of 429s
    (at most `targets[1]`)."""
    rows = bench.rows(RATE_PER_S * 30)
    with endpoint(*LIMITED, *flags) as server:
        bench.run(server, rows, concurrency=32, **limits)
        stats = server.stats()
    ok = stats["by_status"].get("200", 0)
    return [
        Figure(f"{name}: achieved/limit", served_rate(stats, ok) / RATE_PER_S, targets[0],
               True, f"{rows} rows; endpoint admits {RATE_PER_S}/s"),
        Figure(f"{name}: 429 share", stats["rate_limited"] / stats["requests_total"],
               targets[1], False,
               f"{stats['rate_limited']} of {stats['requests_total']} requests, "
               f"{sum(stats['limited_per_second'][:1])} in the first second"),
    ]  # fmt: skip


def fixed_limit(bench: Bench) -> list[Figure]:
    return limited_run(
        bench, "limit set", (), targets=(0.97, 0.01), requests_per_minute=RATE_PER_S * 60
    )


def adaptive(bench: Bench) -> list[Figure]:
    return limited_run(bench, "adaptive, x-ratelimit headers", ())


def adaptive_blind(bench: Bench) -> list[Figure]:
    return limited_run(bench, "adaptive, 429s only", ("--no-limit-headers",))


# TEST-NET-1 (RFC 5737): no task reaches the driver's server there, as on a cluster that cannot
# open connections back to a Spark Connect client.
UNREACHABLE = "192.0.2.1"


def adaptive_alone(bench: Bench) -> list[Figure]:
    """Tasks that cannot reach the driver: each finds its rate from its own answers; and, with
    four times as many tasks as slots, each keeps its part of a budget set to the limit (the
    tasks running at once share it; a slot's next task goes on where the one before stopped)."""
    return [
        *limited_run(bench, "adaptive, no driver, headers", (), driver_address=UNREACHABLE),
        *limited_run(
            bench, "adaptive, no driver, 429s only", ("--no-limit-headers",),
            driver_address=UNREACHABLE,
        ),
        *limited_run(
            bench, f"no driver, limit set, {4 * TASKS} tasks", ("--no-limit-headers",),
            targets=(0.9, 0.01), driver_address=UNREACHABLE, tasks=4 * TASKS,
            requests_per_minute=RATE_PER_S * 60,
        ),
    ]  # fmt: skip


# The matrix of rate budgets: the endpoint admits LIMIT requests (or tokens) in any one-second
# window, 20 ms after each request, and the job is configured with exactly that budget.
MATRIX_LIMITS = (10, 50, 500)
MATRIX_TASKS = (TASKS, 4 * TASKS)  # one task per slot; four times as many tasks as slots
MATRIX_IN_FLIGHT = (4, 64)
MATRIX_SECONDS = 12
MATRIX_LATENCY_S = 0.02
TOKEN_LIMIT_PER_S = 1000
# Tokens the endpoint counts for one of the bench's requests: the prompt's three words
# ("question number 17") and their echo (the echo model's tokens are words, max_tokens 8).
TOKENS_PER_ROW = 6
MAX_TOKENS = 8  # every bench request's
# Stragglers: shapes (limit, tasks, in flight) run again over an input whose first Parquet file
# holds STRAGGLER_FACTOR times the rows of each other one.
STRAGGLER_SHAPES = ((500, 4 * TASKS, 64), (50, TASKS, 4))
STRAGGLER_FACTOR = 5


@dataclass
class Shape:
    """One run of the matrix: what the endpoint admitted against what it could have."""

    label: str
    achieved: float  # of min(limit, what the shape reaches with no budget)
    rate_limited: float  # share of requests answered 429
    tokens: bool = False  # a tokens_per_minute budget (else requests_per_minute)
    note: str = ""  # what bounds the shape, shown in the list of every shape


def rate_matrix(bench: Bench) -> list[Figure]:
    """Requests per minute (and tokens per minute) configured to the endpoint's own limit, in
    every shape: achieved over the limit, and 429s. A shape whose concurrency cannot reach the
    limit (4 in flight x 2 slots / 20 ms is under 500/s) is measured against what it reaches
    with no budget at all, in the same run. STRAGGLER_SHAPES run again over a skewed input."""
    shapes: list[Shape] = []
    with endpoint("--latency-s", str(MATRIX_LATENCY_S), "--window-s", "1") as server:
        for limit in MATRIX_LIMITS:
            for tasks in MATRIX_TASKS:
                for in_flight in MATRIX_IN_FLIGHT:
                    label = f"{limit}/s {tasks}x{in_flight}"
                    bound = float(limit)
                    if TASKS * in_flight / MATRIX_LATENCY_S < 2 * limit:
                        bound = min(bound, _matrix_run(bench, server, limit, tasks, in_flight,
                                                       budget=False)[0])  # fmt: skip
                        label += f" (no budget: {bound:.0f}/s)"
                    rate, limited = _matrix_run(bench, server, limit, tasks, in_flight)
                    shapes.append(Shape(label, rate / bound, limited))
        for limit, tasks, in_flight in STRAGGLER_SHAPES:
            source = skewed_prompts(bench, limit * MATRIX_SECONDS, tasks)
            rate, limited = _matrix_run(bench, server, limit, tasks, in_flight, source=source)
            label = f"{limit}/s {tasks}x{in_flight}, one input partition {STRAGGLER_FACTOR}x"
            shapes.append(Shape(label, rate / limit, limited))
        for tasks, in_flight in ((TASKS, 64), (4 * TASKS, 4)):
            rate, limited = _matrix_run(bench, server, TOKEN_LIMIT_PER_S, tasks, in_flight,
                                        tokens=True)  # fmt: skip
            shapes.append(Shape(f"{TOKEN_LIMIT_PER_S} tokens/s {tasks}x{in_flight}",
                                rate / TOKEN_LIMIT_PER_S, limited, tokens=True,
                                note=f" ({token_bound(server)})"))  # fmt: skip
    return matrix_figures(shapes)


def matrix_figures(shapes: list[Shape]) -> list[Figure]:
    """The worst achieved/limit and the worst 429 share, over the requests shapes and over the
    token shapes."""
    figures: list[Figure] = []
    for unit in ("requests", "tokens"):
        some = [s for s in shapes if s.tokens == (unit == "tokens")]
        worst = min(some, key=lambda s: s.achieved)
        most = max(some, key=lambda s: s.rate_limited)
        every = "; ".join(
            f"{s.label}: {s.achieved:.3f}, {s.rate_limited:.1%} 429{s.note}" for s in some
        )
        figures += [
            Figure(f"rate budgets, {unit}: worst achieved/limit", worst.achieved, 0.97, True,
                   f"{worst.label} of {len(some)} shapes ({every})"),
            Figure(f"rate budgets, {unit}: worst 429 share", most.rate_limited, 0.01, False,
                   most.label),
        ]  # fmt: skip
    return figures


def _matrix_run(
    bench: Bench,
    server: LocalEndpoint,
    limit: int,
    tasks: int,
    in_flight: int,
    *,
    budget: bool = True,
    tokens: bool = False,
    source: str | None = None,
) -> tuple[float, float]:
    """One shape: requests (tokens) per second served with status 200, and the 429 share;
    `source`: the prompts (default: the bench's, in one partition per slot)."""
    server.reset()
    unit = "tokens_per_minute" if tokens else "requests_per_minute"
    server.control(latency_s=MATRIX_LATENCY_S, **{unit: limit if budget else None})
    rows = limit * MATRIX_SECONDS // (TOKENS_PER_ROW if tokens else 1)
    limits = {unit: limit * 60} if budget else {}
    bench.run(server, max(rows, 100), tasks=tasks, source=source, concurrency=in_flight, **limits)
    stats = server.stats()
    served = stats["tokens_served"] if tokens else stats["by_status"].get("200", 0)
    return served_rate(stats, served), stats["rate_limited"] / stats["requests_total"]


def token_bound(server: LocalEndpoint) -> str:
    """What the endpoint could admit of its token limit in the last run, what the run
    achieved in its median second (its first and last, partial, left out) and how many seconds
    it spanned (a 429 near its end adds one: the retry after the whole second the endpoint's
    `Retry-After` asks for). The endpoint holds a request's
    reservation R (prompt + max_tokens) while it runs (MATRIX_LATENCY_S) and its real count u
    after, and admits one more while the window plus R fits in the limit T: at r requests a
    second, r * u + r * latency * (R - u) + R <= T, so at most r * u / T of the limit."""
    stats = server.stats()
    ok = stats["by_status"].get("200", 0)
    if not ok:
        return "nothing answered"
    used = stats["tokens_served"] / ok
    reserved = stats["prompt_tokens"] / ok + MAX_TOKENS
    most = (TOKEN_LIMIT_PER_S - reserved) / (used + MATRIX_LATENCY_S * (reserved - used))
    limited = stats["limited_per_second"]
    answered = [n - (limited[i] if i < len(limited) else 0)
                for i, n in enumerate(stats["per_second"])]  # fmt: skip
    steady = statistics.median(answered[1:-1]) * used if len(answered) > 2 else 0.0
    return (
        f"the endpoint admits at most {most * used / TOKEN_LIMIT_PER_S:.3f} of it: {reserved:.0f} "
        f"tokens held a request while it runs, {used:.1f} after; the run's median second "
        f"{steady / TOKEN_LIMIT_PER_S:.3f}, its seconds {len(answered)}"
    )


def skewed_prompts(bench: Bench, rows: int, partitions: int) -> str:
    """`rows` prompts in `partitions` files (Parquet), the first STRAGGLER_FACTOR times the
    size of each other one."""
    path = bench.workdir / f"skewed_{rows}_{partitions}"
    if not path.exists():
        unit = rows // (STRAGGLER_FACTOR + partitions - 1)
        ends = [STRAGGLER_FACTOR * unit + i * unit for i in range(partitions)]
        ends[-1] = rows
        parts = [prompt_rows(bench.spark, start, end).coalesce(1)
                 for start, end in zip([0, *ends[:-1]], ends, strict=True)]  # fmt: skip
        functools.reduce(DataFrame.unionByName, parts).write.parquet(str(path))
    return str(path)


# What a user waits for: a new process per command, the example config, a new sink.
START_ROWS = 20_000
BARE_START = """
import sys
from pipeline.spark.session import spark_session
spark = spark_session("bare")
spark.read.format("delta").load(sys.argv[1]).count()
"""


def fast_start(bench: Bench) -> list[Figure]:
    """Command to first request, and command to table written, each a new process as a user
    runs it: the job on `conf/local.yaml` (a new sink), a bare pyspark script that starts the
    same session and counts the input, and the thread-pool pandas UDF writing a Delta table."""
    rows = bench.rows(START_ROWS)
    sample = bench.workdir / f"sample_{rows}"
    python = sys.executable
    subprocess.run([python, "-m", "pipeline", "sample", "--out", str(sample), "--rows",
                    str(rows)], check=True, capture_output=True, cwd=ROOT)  # fmt: skip
    source = str(sample / "prompts_delta")
    env = {**os.environ, TOKEN_ENV: TOKEN, "PYSPARK_PYTHON": python}
    with endpoint() as server:
        bare = _timed([python, "-c", BARE_START, source], env)
        started = time.time()
        ours = _timed([
            python, "-m", "pipeline", "run", "--config", str(ROOT / "conf" / "local.yaml"),
            "--progress", "log", "--set", f"source.path={source}",
            "--set", f"endpoint.host={server.url}", "--set", f"endpoint.name={ENDPOINT}",
            "--set", f"endpoint.token_env={TOKEN_ENV}",
            "--set", f"sink.path={bench.new_path(f'start_out_{rows}')}",
        ], env)  # fmt: skip
        first = first_request_s(server.stats(), started)
        server.reset()
        url = f"{server.url}/serving-endpoints/{ENDPOINT}/invocations"
        udf = _timed([python, __file__, "udf-job", url, source,
                      str(bench.new_path(f"udf_out_{rows}"))], env)  # fmt: skip
    return [
        Figure("command to first request vs bare session + count", first / bare, 1.5, False,
               f"{first:.1f} s vs {bare:.1f} s; new Delta sink, {rows} rows"),
        Figure("end to end vs thread-pool UDF, example config", udf / ours, 1.5, True,
               f"{ours:.1f} s vs {udf:.1f} s, command to table written; {rows} rows, "
               "conf/local.yaml (2 tasks x 4 in flight) vs 64 threads"),
    ]  # fmt: skip


# Per-chunk cost: the same rows in one chunk and in chunks of CHUNK_ROWS (Delta, as the example).
CHUNKED_ROWS = 20_000
CHUNK_ROWS = (1_000, 100)
FLOOR_CHUNKS = 10  # bare Spark chunks timed for the floor (the median is taken)
# The same at a latency that leaves the cores idle: what hiding a chunk's cost gains there.
CHUNKED_LATENCY_S = 0.2
CHUNKED_LATENCY_ROWS = 6_000


def chunked(bench: Bench) -> list[Figure]:
    """Requests/s at the endpoint (first to last request) with the rows cut into chunks of
    1,000 and of 100 (on a tenth of the rows: 20 chunks either way), over the same rows in one
    chunk; beside them what a chunk costs Spark with no request at all (the same rows, spread
    once, through an identity `mapInPandas` and a Delta append), in seconds and in the cores'
    busy seconds, the floor under any chunk on an instant endpoint, where the requests keep
    both cores busy. Then 1,000-row chunks at CHUNKED_LATENCY_S of latency, where the cores
    have room for a chunk's Spark work beside the requests."""
    rows = bench.rows(CHUNKED_ROWS)
    delta = {"format": "delta", "mode": "merge"}
    rates = {}
    with endpoint() as server:
        for chunk_rows, count in (
            (rows, rows),
            *((c, rows * c // CHUNK_ROWS[0]) for c in CHUNK_ROWS),
        ):
            server.reset()
            bench.run(server, count, concurrency=64, sink={**delta, "chunk_rows": chunk_rows})
            rates[chunk_rows] = served_rate(server.stats())
    source = bench.prompts(rows)
    floor, floor_busy = _spark_chunk_seconds(bench, source, CHUNK_ROWS[0], FLOOR_CHUNKS)
    one = rates[rows]
    figures = [
        Figure(f"chunk_rows {c} vs one chunk, requests/s at the endpoint", rates[c] / one, 0.9,
               True, f"{rates[c]:.0f}/s vs {one:.0f}/s ({rows} rows in one chunk)")
        for c in CHUNK_ROWS
    ]  # fmt: skip
    # The cores' seconds a chunk's requests take at the one-chunk rate, were they all busy.
    requests = CHUNK_ROWS[0] / one * (os.cpu_count() or 1)
    figures[0].detail += (
        f"; a chunk of {CHUNK_ROWS[0]} rows costs Spark {floor:.2f} s and {floor_busy:.2f} "
        f"core-s with no request (identity mapInPandas, Delta append), its requests at most "
        f"{requests:.2f} core-s: at most {requests / (requests + floor_busy):.2f} of the "
        "one-chunk rate while the requests fill the cores"
    )
    slow = bench.rows(CHUNKED_LATENCY_ROWS)
    slow_rates = {}
    with endpoint("--latency-s", str(CHUNKED_LATENCY_S)) as server:
        for chunk_rows in (slow, CHUNK_ROWS[0]):
            server.reset()
            summary = bench.run(server, slow, concurrency=64,
                                sink={**delta, "chunk_rows": chunk_rows})  # fmt: skip
            slow_rates[chunk_rows] = served_rate(server.stats())
    ratio = slow_rates[CHUNK_ROWS[0]] / slow_rates[slow]
    figures.append(Figure(
        f"chunk_rows {CHUNK_ROWS[0]} vs one chunk, {CHUNKED_LATENCY_S} s latency", ratio, 0.9,
        True, f"{slow_rates[CHUNK_ROWS[0]]:.0f}/s vs {slow_rates[slow]:.0f}/s, {slow} rows, "
        f"64 in flight a task, {summary.tasks} a chunk ({TASKS} in one chunk)",
    ))  # fmt: skip
    return figures


# A nightly rerun whose config changed: every row answered again, its old row replaced; at a
# latency that leaves the cores room for each chunk's Spark work (see `chunked`).
RERUN_CHANGED_ROWS = 6_000
RERUN_CHANGED_CHUNK = 1_000
RERUN_CHANGED_LATENCY_S = 0.2


def rerun_changed(bench: Bench) -> Figure:
    """Requests/s at the endpoint (first to last request) of a rerun whose system prompt
    changed, so that every row is sent again and its row in the sink replaced, over the first
    run of the same rows into a new sink; Delta, merge, chunks of RERUN_CHANGED_CHUNK rows, an
    endpoint answering in RERUN_CHANGED_LATENCY_S."""
    rows = bench.rows(RERUN_CHANGED_ROWS)
    sink = {"path": str(bench.new_path("changed")), "format": "delta", "mode": "merge",
            "chunk_rows": RERUN_CHANGED_CHUNK}  # fmt: skip
    rates, waits = [], []
    with endpoint("--latency-s", str(RERUN_CHANGED_LATENCY_S)) as server:
        for system_prompt in ("Answer briefly.", "Answer in one word."):
            server.reset()
            started = time.monotonic()
            summary = bench.run(server, rows, concurrency=64, sink=sink,
                                system_prompt=system_prompt)  # fmt: skip
            waits.append(time.monotonic() - started)
            rates.append(served_rate(server.stats()))
    return Figure(
        "rerun with a changed config vs a new sink, requests/s at the endpoint",
        rates[1] / rates[0], 0.9, True,
        f"{rates[1]:.0f}/s vs {rates[0]:.0f}/s; {summary.changes.get('changed', 0)} rows "
        f"changed, in chunks of {RERUN_CHANGED_CHUNK}, {RERUN_CHANGED_LATENCY_S} s latency, "
        f"64 in flight a task, {summary.tasks} a chunk; call to table written {waits[1]:.1f} s vs "
        f"{waits[0]:.1f} s",
    )  # fmt: skip


def busy_core_seconds() -> float:
    """Seconds this machine's cores have been busy since it started (all of them, summed):
    Linux's /proc/stat; 0 elsewhere."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    ticks = [int(value) for value in first[1:9]]  # user .. steal (guest is inside user)
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


# The processes whose CPU the `throughput` step accounts for, by a marker in the command line;
# what none of them took (Spark's driver-side Python, this bench) is counted as the rest.
CPU_CLASSES = {
    "endpoint": (b"pipeline.serving",),
    "JVM": (b"org.apache.spark.deploy.SparkSubmit",),
    "Python workers": (b"pyspark.worker", b"pyspark.daemon"),
    "bare clients": (b"multiprocessing.spawn",),
}


class Sampler:
    """Calls `sample` every INTERVAL_S on a thread of its own, from entering to leaving."""

    INTERVAL_S = 0.1

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            self.sample()

    def sample(self) -> None:
        raise NotImplementedError


class CpuSampler(Sampler):
    """Samples the busy core-seconds of this machine (/proc/stat) and the CPU seconds of the
    processes of each of CPU_CLASSES (/proc/PID/stat), so that what a run took between its
    first and its last request at the endpoint can be read back (Linux; on other systems
    nothing is sampled)."""

    def __init__(self) -> None:
        super().__init__()
        self._samples: list[tuple[float, float, dict[str, float]]] = []
        self._classes: dict[str, str | None] = {}  # pid -> class (None: none of them)
        self._tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        by_class = dict.fromkeys(CPU_CLASSES, 0.0)
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            try:
                name = self._class_of(pid)
                if name is not None:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    by_class[name] += (int(fields[11]) + int(fields[12])) / self._tick
            except OSError:  # the process ended while we looked
                continue
        self._samples.append((time.time(), busy_core_seconds(), by_class))

    def _class_of(self, pid: str) -> str | None:
        if pid not in self._classes:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            self._classes[pid] = next(
                (name for name, marks in CPU_CLASSES.items() if any(m in cmdline for m in marks)),
                None,
            )
        return self._classes[pid]

    def per_request(self, stats: dict[str, Any]) -> dict[str, float]:
        """Microseconds of CPU per request, by class and "rest", and the cores busy on average
        ("cores"), between the samples nearest the first and the last request in `stats` (the
        endpoint's); empty when there are too few samples."""
        first, last = stats["first_request_at"] or 0.0, stats["last_request_at"] or 0.0
        if len(self._samples) < 2 or last <= first:
            return {}
        a = min(self._samples, key=lambda sample: abs(sample[0] - first))
        b = min(self._samples, key=lambda sample: abs(sample[0] - last))
        if b[0] <= a[0]:
            return {}
        requests = stats["requests_total"] * (b[0] - a[0]) / (last - first)
        spent = {name: b[2][name] - a[2][name] for name in CPU_CLASSES}
        spent["rest"] = max(0.0, b[1] - a[1] - sum(spent.values()))
        return {
            **{name: seconds / requests * 1e6 for name, seconds in spent.items()},
            "cores": (b[1] - a[1]) / (b[0] - a[0]),
        }


def _spark_chunk_seconds(bench: Bench, source: str, rows: int, chunks: int) -> tuple[float, float]:
    """Median seconds, and median busy core-seconds, of a chunk's Spark work alone: `rows`
    rows of a frame spread over the tasks once (as a run of several chunks spreads them)
    through an identity `mapInPandas` and an append to a Delta table, `chunks` times."""

    def identity(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield from frames

    frame = bench.spark.read.parquet(source).repartition(TASKS).persist()
    total = frame.count()
    out = str(bench.workdir / "bare_chunks")
    seconds, busy = [], []
    for index in range(chunks):
        started, cores = time.monotonic(), busy_core_seconds()
        part = frame.filter(F.pmod(F.col("id"), F.lit(max(1, total // rows))) == index)
        part.mapInPandas(identity, part.schema).write.format("delta").mode("append").save(out)
        seconds.append(time.monotonic() - started)
        busy.append(busy_core_seconds() - cores)
    frame.unpersist()
    return sorted(seconds)[len(seconds) // 2], sorted(busy)[len(busy) // 2]


def _timed(command: list[str], env: dict[str, str]) -> float:
    """Seconds `command` took, from start to exit (it must succeed)."""
    started = time.monotonic()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def memory(bench: Bench) -> Figure:
    small, large = 1_000, bench.rows(200_000)
    peaks = {}
    # Fresh Python workers per task, so each run's peak worker memory is its own.
    bench.restart({"spark.python.worker.reuse": "false"})
    with endpoint() as server:
        for rows in (small, large):
            with WorkerMemory() as sampler:
                bench.run(server, rows, concurrency=64)
            peaks[rows] = sampler.peak_mib
    return Figure(f"worker peak RSS, {large} vs {small} rows", peaks[large] / peaks[small], 1.15,
                  False, f"{peaks[small]:.0f} MiB vs {peaks[large]:.0f} MiB")  # fmt: skip


# The processes whose memory a run shows: a marker in the command line, or this process.
WORKERS = (b"pyspark.daemon", b"pyspark.worker")
DRIVER_JVM = (b"org.apache.spark.deploy.SparkSubmit",)


class WorkerMemory(Sampler):
    """Samples the resident memory of the processes whose command line holds one of `markers`
    (by default PySpark's Python workers), or of this process when `markers` is empty; keeps
    the largest one process reached."""

    INTERVAL_S = 0.05

    def __init__(self, markers: tuple[bytes, ...] = WORKERS) -> None:
        super().__init__()
        self.markers = markers
        self.peak_mib = 0.0

    def sample(self) -> None:
        for rss in _rss_mib(self.markers):
            self.peak_mib = max(self.peak_mib, rss)


def _rss_mib(markers: tuple[bytes, ...]) -> Iterator[float]:
    pids = [str(os.getpid())] if not markers else [p for p in os.listdir("/proc") if p.isdigit()]
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if markers and not any(marker in cmdline for marker in markers):
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    yield int(line.split()[1]) / 1024
        except OSError:  # the process ended while we looked
            continue


# Scale: the job on SCALE_ROWS[1] rows against SCALE_ROWS[0]; then a merge rerun over the larger
# sink with RERUN_NEW of its rows new.
SCALE_ROWS = (100_000, 1_000_000)
RERUN_NEW = 0.01


def scale(bench: Bench) -> list[Figure]:
    """Not in the default run (`--only scale`; about 10 minutes): peak memory and throughput at
    1M rows against 100k rows, Delta sinks in merge mode as the example config; then the
    planning of a merge rerun (1 % new rows) against a bare Spark anti-join count of the same
    two tables."""
    with endpoint() as server:
        figures, sinks = _scale_runs(
            bench, server, {"driver JVM": DRIVER_JVM, "driver Python": (), "worker": WORKERS}
        )
        figures.extend(_rerun_planning(bench, server, sinks[SCALE_ROWS[1]]))
    return figures


# A standalone cluster's executors: the JVMs that hold the rows there.
EXECUTOR_JVM = (b"CoarseGrainedExecutorBackend",)


def scale_cluster(bench: Bench) -> list[Figure]:
    """Not in the default run (`--only scale_cluster`; about 15 minutes): `scale`'s runs on a
    standalone cluster of two 1-core workers on this machine, where the driver is not also the
    executor (as on Databricks and `spark-submit --master spark://...`): its memory apart from
    the executors' (which hold the rows: Spark's cache and sort, bounded by their memory)."""
    with on_cluster(bench), endpoint() as server:
        figures, _ = _scale_runs(bench, server, {
            "driver JVM": DRIVER_JVM, "executor JVM": EXECUTOR_JVM, "worker": WORKERS,
        }, where="cluster: ")  # fmt: skip
    return figures


def rate_cluster(bench: Bench) -> list[Figure]:
    """Not in the default run (`--only rate_cluster`; about 10 minutes): the rate matrix and the
    runs whose tasks cannot reach the driver, on a standalone cluster of two 1-core workers on
    this machine (the driver's budget server reached over the network, each task in an
    executor of its own, a slot's next task in that executor's Python worker)."""
    with on_cluster(bench):
        figures = [*rate_matrix(bench), *adaptive_alone(bench)]
    return [replace(f, name=f"cluster: {f.name}") for f in figures]


@contextmanager
def on_cluster(bench: Bench) -> Iterator[None]:
    """The bench's session on a standalone cluster of two 1-core workers started on this
    machine, for the time of the block; then a local session again, before the cluster stops."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.cluster import StandaloneCluster  # the suite's own fixture, not the package

    workdir = bench.workdir / "cluster"  # logs and executors' files, removed with the bench's
    workdir.mkdir(exist_ok=True)
    with StandaloneCluster(workdir) as cluster:
        bench.restart({"spark.master": cluster.url})
        try:
            yield
        finally:
            bench.restart({})


def _scale_runs(
    bench: Bench,
    server: LocalEndpoint,
    processes: dict[str, tuple[bytes, ...]],
    where: str = "",
) -> tuple[list[Figure], dict[int, str]]:
    """The job on each of SCALE_ROWS: peak RSS of `processes` (name: command-line markers) and
    requests/s, the larger run over the smaller (figures named after `where`); and each run's
    sink."""
    seen: dict[int, dict[str, float]] = {}
    sinks: dict[int, str] = {}
    for rows in SCALE_ROWS:
        server.reset()
        samplers = {name: WorkerMemory(markers) for name, markers in processes.items()}
        with ExitStack() as sampling:
            for sampler in samplers.values():
                sampling.enter_context(sampler)
            started = time.monotonic()
            summary = bench.run(server, rows, concurrency=64,
                                sink={"format": "delta", "mode": "merge"})  # fmt: skip
            wall = time.monotonic() - started
        sinks[rows] = summary.sink
        seen[rows] = {"rate": served_rate(server.stats()), "wall": wall,
                      **{k: v.peak_mib for k, v in samplers.items()}}  # fmt: skip
    small, large = (seen[r] for r in SCALE_ROWS)
    figures = [
        Figure(f"{where}{name} peak RSS, {SCALE_ROWS[1]} vs {SCALE_ROWS[0]} rows",
               large[name] / small[name], 1.15, False,
               f"{small[name]:.0f} MiB vs {large[name]:.0f} MiB")
        for name in processes
    ]  # fmt: skip
    figures.append(Figure(
        f"{where}requests/s, {SCALE_ROWS[1]} vs {SCALE_ROWS[0]} rows",
        large["rate"] / small["rate"], 0.9, True,
        f"{large['rate']:.0f}/s vs {small['rate']:.0f}/s at the endpoint; command to table "
        f"written {large['wall']:.0f} s vs {small['wall']:.0f} s"))  # fmt: skip
    return figures, sinks


BARE_ANTI_JOIN = """
import sys
from pipeline.spark.session import spark_session
spark = spark_session("bare")
answered = spark.read.format("delta").load(sys.argv[2]).select("id")
spark.read.parquet(sys.argv[1]).join(answered, "id", "left_anti").count()
"""
COMMAND_RUNS = 2  # of the job and of the bare script each, alternating (the median is taken)


def _rerun_planning(
    bench: Bench,
    server: LocalEndpoint,
    sink: str,
    rows: int = SCALE_ROWS[1],
    make_rows: Callable[[SparkSession, int, int], DataFrame] | None = None,
    what: str = "",
) -> list[Figure]:
    """A merge rerun over `sink` (the answers to `rows` rows of `make_rows`, default
    `prompt_rows`) whose input has RERUN_NEW more rows. As a user waits for it: the command
    (a new process, over a copy of the sink and its lease) to its first request, over a bare
    pyspark script that starts the same session and counts the anti-join of the same input and
    sink. Then in the bench's warm session: the call to the first request, over a bare
    anti-join count there (each median of two)."""
    make_rows = make_rows or prompt_rows
    new = int(rows * RERUN_NEW)
    source = str(bench.new_path(f"rerun_{rows}{what.replace(' ', '_')}"))
    make_rows(bench.spark, 0, rows + new).write.parquet(source)
    settings = {"source": source, "concurrency": 64}
    merge = {"format": "delta", "mode": "merge"}
    python = sys.executable
    env = {**os.environ, TOKEN_ENV: TOKEN, "PYSPARK_PYTHON": python}
    commands: dict[str, list[float]] = {"job": [], "bare": []}
    for _ in range(COMMAND_RUNS):
        copy = str(bench.new_path("rerun_sink"))
        for suffix in ("", "_lease"):
            shutil.copytree(sink + suffix, copy + suffix)
        config = Path(f"{copy}.json")
        config.write_text(json.dumps(
            bench.config(server, rows + new, **settings, sink={"path": copy, **merge})
        ))  # fmt: skip
        commands["bare"].append(_timed([python, "-c", BARE_ANTI_JOIN, source, copy], env))
        server.reset()
        started = time.time()
        _timed([python, "-m", "pipeline", "run", "--config", str(config)], env)
        stats = server.stats()
        if stats["requests_total"] != new:  # the copy must be recognised as the sink it is
            raise RuntimeError(f"the rerun over a copy of the sink sent "
                               f"{stats['requests_total']} requests, not {new}")  # fmt: skip
        commands["job"].append(first_request_s(stats, started))
    bare = []
    for _ in range(2):
        started = time.monotonic()
        answered = bench.spark.read.format("delta").load(sink).select("id")
        bench.spark.read.parquet(source).join(answered, "id", "left_anti").count()
        bare.append(time.monotonic() - started)
    server.reset()
    started = time.time()
    summary = bench.run(server, rows + new, **settings, sink={"path": sink, **merge})
    first = first_request_s(server.stats(), started)
    job, script = (statistics.median(commands[k]) for k in ("job", "bare"))
    warm = statistics.median(bare)
    name = f"merge rerun planning vs bare anti-join, {rows} rows{what}, {new} new"
    return [
        Figure(f"{name}, command to first request", job / script, 2.0, False,
               f"{job:.1f} s vs {script:.1f} s (new processes: the job's command over a copy "
               "of the sink, a script starting the same session and counting the anti-join; "
               f"job {', '.join(f'{s:.1f}' for s in commands['job'])} s, script "
               f"{', '.join(f'{s:.1f}' for s in commands['bare'])} s)"),
        Figure(f"{name}, in a warm session", first / warm, 2.0, False,
               f"call to first request {first:.1f} s vs anti-join count {warm:.1f} s; "
               f"{summary.rows} rows sent, {summary.recognised} recognised by their values"),
    ]  # fmt: skip


# rerun_long: the merge rerun planning of `scale` with prompts of about LONG_PROMPT_CHARS.
LONG_ROWS = 300_000
LONG_PROMPT_CHARS = 2_048


def rerun_long(bench: Bench) -> list[Figure]:
    """Not in the default run (`--only rerun_long`; about 4 minutes): `scale`'s merge rerun
    planning where prompts are 2 KB, as real ones are, not 25 bytes: what finding the answered
    rows costs when their values are long (a bare anti-join reads the ids alone)."""
    rows = bench.rows(LONG_ROWS)
    source = str(bench.new_path(f"long_prompts_{rows}"))
    long_prompt_rows(bench.spark, 0, rows).write.parquet(source)
    with endpoint() as server:
        summary = bench.run(server, rows, source=source, concurrency=64,
                            sink={"format": "delta", "mode": "merge"})  # fmt: skip
        return _rerun_planning(
            bench, server, summary.sink, rows, long_prompt_rows, f" of {LONG_PROMPT_CHARS} B"
        )


def long_prompt_rows(spark: SparkSession, start: int, end: int) -> DataFrame:
    """Prompt rows with ids `start` to `end` (excluded), each prompt LONG_PROMPT_CHARS of text
    that differs from row to row (hex digests: as little repetition as real text has)."""
    digests = [
        F.sha2(F.concat(F.col("id").cast("string"), F.lit(f"-{k}")), 256)
        for k in range(LONG_PROMPT_CHARS // 64)
    ]  # fmt: skip
    return spark.range(start, end).select(
        F.col("id"), F.concat(F.lit("question "), F.col("id"), F.lit(" "), *digests).alias("prompt")
    )


Step = Callable[[Bench], Figure | list[Figure]]
DEFAULT_STEPS: tuple[Step, ...] = (
    throughput,
    latency_bound,
    rate_matrix,
    fast_start,
    chunked,
    rerun_changed,
    fixed_limit,
    adaptive,
    adaptive_blind,
    adaptive_alone,
    memory,
)
# Every step by name; `scale`, `scale_cluster`, `rate_cluster` and `rerun_long` run only when
# named (2-16 minutes each).
STEPS: dict[str, Step] = {
    step.__name__: step
    for step in (*DEFAULT_STEPS, scale, scale_cluster, rate_cluster, rerun_long)
}


# The default run must finish within this many minutes.
BENCH_MINUTES = 15


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every row count")
    parser.add_argument("--out", default=str(ROOT / "data" / "bench" / "latest.json"))
    parser.add_argument("--only", nargs="+", default=None, metavar="STEP", choices=STEPS,
                        help="run only these steps: " + ", ".join(STEPS))  # fmt: skip
    args = parser.parse_args(argv)
    started = time.monotonic()
    spark = spark_session("batch-chat-bench", SPARK_CONF)
    spark.sparkContext.setLogLevel("ERROR")
    figures: list[Figure] = []
    # Seconds each step took, in the order run (the whole run: within BENCH_MINUTES).
    took: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="batch-chat-bench-") as tmp:
        bench = Bench(spark, Path(tmp), args.scale)
        steps = DEFAULT_STEPS if args.only is None else [STEPS[name] for name in args.only]
        for step in steps:
            step_started = time.monotonic()
            found = step(bench)
            seconds = time.monotonic() - step_started
            took.append((step.__name__, seconds))
            for figure in found if isinstance(found, list) else [found]:
                print(figure.row(), file=sys.stderr, flush=True)
                figures.append(figure)
            print(f"step {step.__name__}: {seconds:.0f} s", file=sys.stderr, flush=True)
    bench.spark.stop()
    if args.only is None:  # the default run, all of it
        whole_s = time.monotonic() - started
        figures.append(Figure("the whole run, minutes", whole_s / 60, BENCH_MINUTES, False,
                              f"{whole_s:.0f} s, the session's start included"))  # fmt: skip
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    steps_took = ", ".join(f"{name} {seconds:.0f}" for name, seconds in took)
    table = [
        f"benchmark {when} on {machine} ({time.monotonic() - started:.0f} s; steps: {steps_took})",
        "",
        "| figure | measured | target | met | detail |",
        "| --- | --- | --- | --- | --- |",
        *(f.row() for f in figures),
    ]
    print("\n".join(table))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"when": when, "machine": machine, "figures": [asdict(f) for f in figures],
               "step_seconds": dict(took)}  # fmt: skip
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["udf-job"]:
        udf_job(*sys.argv[2:5])
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
