"""A sliding window of in-flight chat requests, on a private event loop, for one Spark task.

The loop runs on its own thread for the life of the task, so requests keep flowing while the
task's Python thread reads the next Arrow batch or hands a finished one back to Spark. A fixed
pool of `concurrency` workers pulls from one queue that every submitted batch feeds: when the
slowest requests of one batch are still running, the next batch's requests already fill the free
slots. The engine builds what the client borrows (the limiter) inside that loop, once per task,
and closes it when the task ends. The loop and its aiohttp session outlive the task: the next
task in the same process goes on over the connections this one opened (see `_Connections`).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp

from pipeline.control.agents import Reporter
from pipeline.control.progress import Tally
from pipeline.core.chat import Outgoing, RowResult
from pipeline.core.errors import describe
from pipeline.core.loopthread import LoopThread
from pipeline.http.client import ChatClient
from pipeline.http.journal import AnswerJournal
from pipeline.http.limiter import Limiter, build_limiter
from pipeline.http.settings import ClientSettings

# Distinct requests whose answers a task keeps for identical requests that come later.
DEDUPE_MEMORY = 4096
# How long closing may wait for the session's connections to shut down.
CLOSE_TIMEOUT_S = 10.0


@dataclass(eq=False)
class _Batch:
    """Results of one submitted batch; `future` resolves when the last request has finished."""

    results: list[RowResult | None]
    remaining: int
    tally: Tally
    future: concurrent.futures.Future[list[RowResult]] = field(
        default_factory=concurrent.futures.Future
    )

    def complete(self, index: int, result: RowResult) -> None:
        self.results[index] = result
        self.tally.count(result)
        self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result([r for r in self.results if r is not None])


@dataclass(eq=False)
class _Shared:
    """One request that several rows asked: its result once known, and the rows waiting."""

    result: RowResult | None = None
    waiting: list[tuple[_Batch, int, str]] = field(default_factory=list)

    def resolve(self, result: RowResult) -> None:
        self.result = result
        for batch, index, request_id in self.waiting:
            batch.complete(index, result.copied_to(request_id))
        self.waiting.clear()


class Engine:
    """Use as a context manager; `submit` batches from the task's thread.

    With `dedupe`, a request whose `request_hash` was already submitted in this task is not sent
    again: its row gets a copy of the first one's result (with its own request_id, `attempts` 0).
    A request whose hash is in `known` (answers an earlier attempt paid for, see
    `pipeline.http.journal`) is not sent: its row gets that answer. Every paid answer goes to
    `journal`. `report_as` names the task and its attempt in progress reports.
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        dedupe: bool = False,
        known: Mapping[str, RowResult] | None = None,
        journal: AnswerJournal | None = None,
        report_as: tuple[str, int] | None = None,
    ) -> None:
        self._settings = settings
        self._dedupe = dedupe
        self._known = known or {}
        self._journal = journal
        self._report_as = report_as
        # Touched only on the loop's thread.
        self._shared: OrderedDict[str, _Shared] = OrderedDict()
        # The loop and session, taken when the engine is entered.
        self._connections: _Connections
        self._loop: LoopThread
        self._queue: asyncio.Queue[tuple[_Batch, int, Outgoing]] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._limiter: Limiter | None = None
        self._client: ChatClient | None = None
        # Requests being sent now, and set when none is (touched on the loop's thread).
        self._sending = 0
        self._idle: asyncio.Event | None = None
        # Rows finished so far (touched on the loop's thread), reported to the driver.
        self._tally = Tally()
        self._reporter: Reporter | None = None
        # The task's input has ended: once the queue is empty, no request but a retry comes.
        self._input_ended = False

    def __enter__(self) -> Engine:
        self._connections = _Connections.take(_session_key(self._settings))
        self._loop = self._connections.loop
        try:
            self._loop.run(self._open())
        except BaseException:
            self._connections.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        closed = False
        try:
            self._loop.run(self._close(), CLOSE_TIMEOUT_S)
            closed = True
        finally:
            if closed:
                self._connections.put_back()
            else:  # what the task left on the loop may still run: nothing of it is kept
                self._connections.close()

    @property
    def superseded(self) -> bool:
        """Whether a newer attempt of this task runs (see `AnswerJournal`): nothing more is
        sent."""
        return self._journal is not None and self._journal.superseded

    @property
    def stop_reason(self) -> str | None:
        """Why the client stopped sending (see `ChatClient.stop_reason`), or None."""
        return None if self._client is None else self._client.stop_reason

    def submit(
        self, items: Sequence[Outgoing | RowResult]
    ) -> concurrent.futures.Future[list[RowResult]]:
        """Queue the requests of one batch; results come back in the same order as `items`.

        Items that are already results (rows rejected before sending) pass through untouched.
        """
        results: list[RowResult | None] = [i if isinstance(i, RowResult) else None for i in items]
        pending = [(n, i) for n, i in enumerate(items) if not isinstance(i, RowResult)]
        batch = _Batch(results, remaining=len(pending), tally=self._tally)
        self._loop.call_soon(self._enqueue, batch, pending)
        return batch.future

    def input_ended(self) -> None:
        """No batch will be submitted after this one: once the last request is taken, the
        limiter gives back what it holds for more (see `Limiter.ending`)."""
        self._loop.call_soon(self._end_input)

    def _end_input(self) -> None:
        self._input_ended = True
        self._tell_ending()

    def _tell_ending(self) -> None:
        """The limiter told, once the input ended and no request is left in the queue."""
        assert self._queue is not None and self._limiter is not None
        if self._input_ended and self._queue.empty():
            self._limiter.ending()

    def _enqueue(self, batch: _Batch, pending: list[tuple[int, Outgoing]]) -> None:
        assert self._queue is not None
        for result in batch.results:
            if result is not None:
                self._tally.count(result)
        if not pending:
            batch.future.set_result([r for r in batch.results if r is not None])
        for index, request in pending:
            earlier = self._known.get(request.request_hash or "")
            if earlier is not None:
                batch.complete(index, recovered(earlier, request.request_id))
                continue
            key = request.request_hash if self._dedupe else None
            shared = self._shared.get(key) if key else None
            if shared is None:
                if key:
                    self._remember(key)
                self._queue.put_nowait((batch, index, request))
            elif shared.result is not None:
                batch.complete(index, shared.result.copied_to(request.request_id))
            else:
                shared.waiting.append((batch, index, request.request_id))

    def _remember(self, key: str) -> None:
        # Answers are kept for the last DEDUPE_MEMORY keys only, so memory stays flat however
        # long the task; identical requests arrive next to each other (see `chunks.spread`).
        self._shared[key] = _Shared()
        while len(self._shared) > DEDUPE_MEMORY:
            oldest = next(iter(self._shared.values()))
            if oldest.result is None:
                break  # still in flight: rows are waiting for it
            self._shared.popitem(last=False)

    async def _open(self) -> None:
        self._queue = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._session = self._connections.session(self._settings)
        self._limiter = build_limiter(self._settings)
        self._client = ChatClient(self._settings, self._session, self._limiter)
        self._workers = [
            asyncio.create_task(self._work()) for _ in range(self._settings.limits.concurrency)
        ]
        if self._settings.progress_url is not None:
            name, attempt = self._report_as or (None, 0)
            self._reporter = Reporter(
                self._settings.progress_url, self._tally, name=name, attempt=attempt
            )
            self._reporter.start()

    async def _work(self) -> None:
        assert self._queue is not None and self._client is not None
        while True:
            batch, index, request = await self._queue.get()
            if self._input_ended and self._queue.empty():
                # Once this request waits for its permit (the limiter gives back only what
                # nobody waits for): this worker runs on into `acquire` before the loop turns.
                asyncio.get_running_loop().call_soon(self._tell_ending)
            if self.superseded:
                batch.complete(index, _not_sent(request, "superseded by a newer attempt"))
                continue
            self._busy(+1)
            try:
                result = await self._client.send(request)
            except Exception as err:  # send() answers every failure; this guards the guard
                result = _not_sent(request, describe(err))
            finally:
                self._busy(-1)
            self._tally.rate_limited = self._client.rate_limited
            if self._journal is not None and result.attempts:
                self._journal.record(result)
            batch.complete(index, result)
            shared = self._shared.get(request.request_hash) if request.request_hash else None
            if shared is not None:
                shared.resolve(result)

    def _busy(self, change: int) -> None:
        assert self._idle is not None
        self._sending += change
        if self._sending:
            self._idle.clear()
        else:
            self._idle.set()

    async def _close(self) -> None:
        if self.superseded and self._idle is not None:
            # What is in flight is paid: let it finish and reach the journal, so the newer
            # attempt, which waits for this one's stop mark, finds it.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self._settings.limits.timeout_s)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._reporter is not None:
            await self._reporter.close()
        if self._limiter is not None:
            await self._limiter.close()


def _not_sent(request: Outgoing, error: str) -> RowResult:
    return RowResult(request.request_id, "error", error=error, request_hash=request.request_hash)


def recovered(earlier: RowResult, request_id: str) -> RowResult:
    """`earlier` (an answer recovered from the journal) for the row `request_id`: the row that
    paid keeps its attempts, an identical request's row gets a copy."""
    if earlier.request_id == request_id:
        return earlier
    return earlier.copied_to(request_id)


def _session_key(settings: ClientSettings) -> tuple[object, ...]:
    """What `open_session` builds a session from: a task with the same key can use it."""
    limits = settings.limits
    return (
        limits.concurrency,
        settings.endpoint.verify_tls,
        limits.timeout_s,
        limits.connect_timeout_s,
    )


class _Connections:
    """An event loop on a thread of its own and the aiohttp session opened on it, which a
    process keeps from one task to the next.

    Spark runs a slot's next task in the same Python worker (`spark.python.worker.reuse`, on by
    default): the next chunk's task, or the next run's in a long-lived session, goes on over the
    connections the task before it opened (its keep-alive ones, up to its concurrency), with no
    new TCP and TLS handshakes before its first answers. aiohttp closes a connection idle for 15
    s; a connection the server closed meanwhile is dropped from the pool, and a request on one
    it closes as the request goes is retried (`ConnectionFailed`). `take` hands the kept ones
    to one engine at a time (a second engine at once in the process gets its own), and
    `put_back` keeps the last ones given back.
    """

    _idle: _Connections | None = None
    _lock = threading.Lock()

    def __init__(self, key: tuple[object, ...]) -> None:
        self.key = key
        self.loop = LoopThread("chat-engine")
        self.loop.start()
        self._session: aiohttp.ClientSession | None = None  # touched on the loop's thread

    @classmethod
    def take(cls, key: tuple[object, ...]) -> _Connections:
        """The kept loop and session when they were opened for `key`, else new ones."""
        with cls._lock:
            idle, cls._idle = cls._idle, None
        if idle is not None and idle.key == key and idle.loop.alive:
            return idle
        if idle is not None:
            idle.close()
        return cls(key)

    def put_back(self) -> None:
        """Keep these for the next task (the engine using them has closed)."""
        with self._lock:
            earlier, _Connections._idle = _Connections._idle, self
        if earlier is not None:
            earlier.close()

    def session(self, settings: ClientSettings) -> aiohttp.ClientSession:
        """The session, opened on the first call (call it on the loop's thread)."""
        if self._session is None or self._session.closed:
            self._session = open_session(settings)
        return self._session

    def close(self) -> None:
        """Close the session and stop the loop; never raises."""
        if self.loop.alive:
            if self._session is not None:
                with contextlib.suppress(Exception):
                    self.loop.run(self._session.close(), CLOSE_TIMEOUT_S)
            self.loop.stop(CLOSE_TIMEOUT_S)

    @classmethod
    def close_idle(cls) -> None:
        """Close what is kept (at the process's exit)."""
        with cls._lock:
            idle, cls._idle = cls._idle, None
        if idle is not None:
            idle.close()


atexit.register(_Connections.close_idle)


def open_session(settings: ClientSettings) -> aiohttp.ClientSession:
    """A session sized for the task's concurrency, with the configured timeouts."""
    limits = settings.limits
    connector = aiohttp.TCPConnector(
        limit=limits.concurrency,
        ssl=settings.endpoint.verify_tls,  # True: verify certificates
        ttl_dns_cache=300,
    )
    # The Authorization header goes with each request: a renewed token replaces it.
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    timeout = aiohttp.ClientTimeout(total=limits.timeout_s, sock_connect=limits.connect_timeout_s)
    # No cookies: the session outlives its task (see `_Connections`), and a cookie a gateway
    # set (its login after a token) would go on with the next run's requests, whatever token
    # those carry.
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
