"""When to stop sending: answers that every row would get, counted across one task's requests.

A wrong token, a wrong endpoint name or a request section the endpoint refuses fails every row
the same way; sending the rest of the table to learn that again costs time (and, for some
errors, money). After `limits.max_fatal_errors` such answers the task stops sending: its
remaining rows become `aborted:` error rows and the job stops with the reason (`JobAborted`).
Which answers count is a property of the error class (`stops_job`, `stops_job_before_success`,
see `core.errors`); this module only counts them and words the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.core.errors import EndpointError, Stopped


class FatalAnswerGuard:
    """Counts the answers of one task that stop the job; `stop_reason` is set once they reach
    `max_fatal_errors`, and never unset.

    `url` names the endpoint in the reason; `redact` removes secrets from it.
    """

    __slots__ = ("_answered_ok", "_fatal", "_max_fatal", "_redact", "_url", "stop_reason")

    def __init__(
        self, max_fatal_errors: int, *, url: str, redact: Callable[[str], str] = str
    ) -> None:
        self._max_fatal = max_fatal_errors
        self._url = url
        self._redact = redact
        self._fatal = 0
        self._answered_ok = False  # once True, stays True: some request got a 2xx answer
        self.stop_reason: str | None = None

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    def raise_if_stopping(self) -> None:
        """Refuse to send once the task is stopping.

        Raises:
            Stopped: with the stop reason.
        """
        if self.stop_reason is not None:
            raise Stopped(self.stop_reason)

    def answered_ok(self) -> None:
        """A request succeeded: from now on errors that only stop a job before any success
        are about their own row."""
        self._answered_ok = True

    def judge(self, error: EndpointError) -> None:
        """Count `error` if every row would get it."""
        if not self._stops_job(error):
            return
        self._fatal += 1
        if self.stop_reason is None and self._fatal >= self._max_fatal:
            self.stop_reason = self._reason(error)

    def _stops_job(self, error: EndpointError) -> bool:
        # A 400 or an unreachable host before any success is most likely the configuration
        # (every row would get it); once a request has succeeded, it is about its own row (or
        # a passing fault) and stays an error row, retried as its class says.
        return error.stops_job or (error.stops_job_before_success and not self._answered_ok)

    def _reason(self, error: EndpointError) -> str:
        outcome = error.outcome.format(code=error.code)
        reason = f"{self._fatal} requests to {self._url} {outcome} ({error}); {error.hint}"
        return self._redact(reason).rstrip("; ")
