"""The job-wide request and token budgets, one for all tasks, kept on the driver.

Tasks lease permits in small batches (see `agents.SharedLimits`). A budget is a schedule, not a
bucket: each permit has its own send time, one interval after the one before (the generic cell
rate algorithm), and a grant tells the task when its permits fall due. Budget that no task asks
for in time is not lost as long as some task keeps asking ahead, so the rate a job reaches is
the rate it was given, whatever the lease round trips; and no window ever sees more than the
rate, since permits never pile up while nobody asks. A task that finished stops asking, so the
tasks still running get its share at once, and gives back the permits it held; a task refused
asks again soon (`YOUNGER_POLL_S`), so what comes back is not left unused.

The request rate also adapts to the endpoint. It starts where the user put it: a configured
`requests_per_minute` (never exceeded), else no rate at all (the tasks' concurrency is the only
bound). On 429s it backs off on evidence: to the rate the endpoint was seen to admit since the
last change, and at least a step below the rate that drew them (a small step under a configured
budget, whose 429s say the endpoint is shared or its window is shorter; a larger one
otherwise). Quiet seconds search back towards the rate that drew 429s (halving the distance
each second, as TCP BIC does) before probing a few percent further (a task's own budget: faster
while it stays quiet); where the token budget binds, to just under it, and past it slowly.
The first decrease, judged on the first report of a 429, is counted again once every task has
told what got through. An `x-ratelimit-limit-*` header, when the endpoint sends one, sets the
ceiling outright. Pure logic: the clock is injected.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass

from pipeline.control.peers import HostPeers
from pipeline.control.protocol import LeaseAsk, LeaseGrant
from pipeline.core.timing import Clock

log = logging.getLogger(__name__)

# A lease holds permits due within this many seconds, so tasks share the rate finely; a task
# asks for its next lease before these are spent. The oldest task running books this far
# ahead; the others only what it leaves, this close ahead. So tasks do not all end at once: the
# oldest one finishes first while the next oldest is already running, and takes over its rate
# without the gap of a Spark task's start (about half a second) whenever it can carry it.
LEASE_SECONDS = 0.05
YOUNGER_LEASE_SECONDS = 0.01
# A task that has not asked for this long has ended.
TASK_GONE_S = 2.0
# A task that ended keeps its place among the tasks running this long, for a retry it may send.
ENDED_KEPT_S = 60.0
# Permits granted at once while there is no rate at all (the task drops them on a 429).
UNPACED_GRANT = 256
# A task refused a lease asks again after at least this long.
MIN_WAIT_S = 0.005
# A younger task refused asks again after at most this long (the tasks younger than the oldest,
# all together, this often): the oldest books LEASE_SECONDS ahead and, when its input ends,
# gives back what it did not use; a younger task told to wait until the end of that booking
# would leave the permits given back unused (a hand-off cost 20 of 500/s, 40 ms, each time).
YOUNGER_POLL_S = 0.01
# The adaptive rate changes at most once per this many seconds.
ADAPT_PERIOD_S = 1.0
# The first decrease is counted again this long after it, when every task has told its answers
# of that time (tasks that send at no rate ask seldom).
RECOUNT_AFTER_S = 0.5
# On 429s: at most this share of the rate that drew them, under a budget the user configured
# (the endpoint let through about what was asked) ...
CONFIGURED_BACKOFF = 0.98
BACKOFF = 0.85  # ... and without one
DECREASE = 0.5  # never more than this off at once: the evidence may be thin
INCREASE = 0.03  # share of the rate added per quiet period, when probing; after PATIENCE
# quiet periods of probing in a row, twice the step at each, up to MAX_PROBE: a rate far under
# what the endpoint admits (a task that another task's end left with its small share, a
# decrease on thin evidence) climbs back in seconds, not a minute (TCP BIC's max probing)
PATIENCE = 2
MAX_PROBE = 0.15
CEILING_STEP = 0.05  # ... or this share of a known ceiling, if more
# Where the token budget binds, 429s at a token rate mark it too fast: quiet periods climb back
# to this share of it, not to it (back at it, the same 429s would come again: one every couple
# of seconds at a budget exactly the endpoint's, in a 1 s window whose last request's
# reservation must fit too) ...
TOKEN_CAP = 0.99
# ... and past it by CAP_PROBE of the ceiling only after this many quiet periods there (the
# 429s may have been another client's, or the endpoint's passing trouble).
CAP_PATIENCE = 10
CAP_PROBE = 0.005
# 429s keep coming for a while after a decrease (retries waiting out a full window): one
# decrease per this long.
DECREASE_COOLDOWN_S = 2 * ADAPT_PERIOD_S
# A share of 429s that slowing down did not change (see SIGNIFICANT) is not about the rate
# (an endpoint that answers some requests 429 whatever the rate): it, and this much more, is
# the endpoint's usual from then on, never a reason to slow down.
NOISE_MARGIN = 1.5
# A decrease is judged on every answer since it, against the 429s the share before it would
# have given: fewer by this many standard deviations (of that count), it was right; more,
# it was not enough; neither, once this many 429s were expected, they are the endpoint's usual
# (a quiet second is no proof: at 20 answers a second and 7.5 % of them 429s, one comes by
# chance one time in five). Until judged, no further decrease (quiet seconds still speed up, at
# most halfway back to the rate that drew the 429s: see `_speed_up`) ...
SIGNIFICANT = 2.0
NOISE_EVIDENCE = 6  # more than SIGNIFICANT squared: none of them, the decrease was right
HOLD_MAX_S = 30 * ADAPT_PERIOD_S  # ... for at most this long (then the decrease counts as right)
# 429s are judged on at least this many answers (a first report may hold three answers, and
# two of them 429s): fewer say nothing yet.
MIN_JUDGED = 20
# Stay this far under a known limit, configured or announced in the endpoint's headers: send
# times jitter by a few milliseconds (a lease's reply comes late, a loop is busy), and exactly at
# the limit a window the endpoint measures would now and then see one request too many.
MARGIN = 0.985
MIN_RATE = 0.1  # requests per second


class Schedule:
    """Send times for one unit (requests, or tokens) at `rate_per_s`: the theoretical arrival
    time of the next unit never falls behind now, so nothing piles up while nobody asks."""

    def __init__(self, rate_per_s: float, clock: Clock = time.monotonic) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate must be positive")
        self.rate_per_s = rate_per_s
        self._clock = clock
        self._next = clock()  # when the next unit is due

    def due(self) -> float:
        """When the next unit may go: now, or later when the rate is spoken for until then."""
        self._next = max(self._next, self._clock())
        return self._next

    def book(self, start: float, units: float) -> None:
        """`units` booked from `start` on (`start` no earlier than `due()`)."""
        self._next = max(self._next, start) + units / self.rate_per_s

    def give_back(self, units: float) -> None:
        """`units` booked and not used (negative: used beyond what was booked)."""
        self._next = max(self._clock(), self._next - units / self.rate_per_s)

    def set_rate(self, rate_per_s: float) -> None:
        """The rate from now on. A faster one also shortens the wait already booked for the
        next unit: at 0.1/s a unit booked ahead would hold the next one 10 s, whatever rate
        came after it (a task back from a pause evens out from nothing, see `peers`)."""
        now = self._clock()
        if rate_per_s > self.rate_per_s and self._next > now:
            self._next = now + (self._next - now) * self.rate_per_s / rate_per_s
        self.rate_per_s = rate_per_s


@dataclass(frozen=True)
class _Slowed:
    """A decrease: the share of 429s that drew it, the rates before it, and the request rate it
    set."""

    share: float
    requests: float | None
    tokens: float | None
    after: float | None


class JobBudget:
    """Requests and tokens per second for the whole job, leased to its tasks."""

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        adaptive: bool,
        clock: Clock = time.monotonic,
        sees_all: bool = True,
        peers: HostPeers | None = None,
    ) -> None:
        """`sees_all`: every task of the job reports to this budget. A budget of one task among
        others it does not hear from (`agents.LocalLessor`) never takes 429s for noise: they may
        be the other tasks' doing, and slowing down this task alone need not lessen them.
        `peers`: such a budget's window on the rates of the run's other tasks on its host
        (see `_even_out`)."""
        self._clock = clock
        self._sees_all = sees_all
        self._peers = peers
        self._configured = requests_per_minute is not None
        self._ceiling = (
            None if requests_per_minute is None else requests_per_minute / 60 * MARGIN
        )
        self._adaptive = adaptive
        self._requests = None if self._ceiling is None else Schedule(self._ceiling, clock)
        self._token_ceiling = None if tokens_per_minute is None else tokens_per_minute / 60 * MARGIN
        self._tokens = None if self._token_ceiling is None else Schedule(self._token_ceiling, clock)
        self._decreased_at = -math.inf
        self._period_start = clock()
        self._period_ok = self._period_limited = 0  # answers in the period
        self._granted_since_change = 0
        # The last decrease, until the answers since show whether it lessened the 429s, and
        # those answers: successes, 429s.
        self._slowed: _Slowed | None = None
        self._since = [0, 0]
        # The share of 429s the endpoint answers whatever the rate: not a reason to slow down.
        self._noise = 0.0
        # Answers reported in the last DECREASE_COOLDOWN_S: (when, successes, 429s).
        self._recent: deque[tuple[float, int, int]] = deque()
        self._first_ask: float | None = None
        self._first_answer: float | None = None  # when the first answer was told
        # Each task's first and last ask: (started, last seen), by name.
        self._tasks: dict[str, tuple[float, float]] = {}
        # Tasks that said they ended, with their first ask and their end, for ENDED_KEPT_S.
        self._ended: dict[str, tuple[float, float]] = {}
        # The rate that last drew 429s: increases search back towards it.
        self._too_fast: float | None = None
        # When the first decrease (made at no rate) is counted again, every report in.
        self._recount_at: float | None = None
        self._probes = 0  # quiet periods of probing in a row
        # Where the token budget binds: the token rate quiet periods climb back to after 429s
        # (see TOKEN_CAP), and the quiet periods spent at it.
        self._token_cap: float | None = None
        self._quiet_at_cap = 0
        self.ok = 0
        self.rate_limited = 0

    @property
    def rate_per_s(self) -> float | None:
        """The request rate now; None: no rate (the tasks' concurrency is the bound)."""
        return None if self._requests is None else self._requests.rate_per_s

    @property
    def token_rate_per_s(self) -> float | None:
        """The token rate now; None: no token budget."""
        return None if self._tokens is None else self._tokens.rate_per_s

    @property
    def tasks_running(self) -> int:
        """Tasks counted as running: asked lately, and not told they ended."""
        return len(self._tasks)

    def lease(self, ask: LeaseAsk) -> LeaseGrant:
        """Grant what the budgets allow within the next `LEASE_SECONDS`, after learning from
        what the task saw."""
        now = self._clock()
        self._learn(ask, now)
        if self._peers is not None:
            self._even_out(self._peers, now)
        if ask.requests <= 0:  # its last ask, unless a retry is still to come
            ended = self._tasks.pop(ask.task, None)
            if ended is not None:
                self._ended[ask.task] = (ended[0], now)
            if self._peers is not None:
                self._peers.pause(self.rate_per_s)
            return LeaseGrant(0, 0.0, 0.0)
        per_request = ask.tokens / ask.requests if ask.tokens > 0 else 0.0
        schedules = [self._requests] if self._requests is not None else []
        intervals = [] if self._requests is None else [1 / self._requests.rate_per_s]
        if self._tokens is not None and per_request > 0:
            schedules.append(self._tokens)
            intervals.append(per_request / self._tokens.rate_per_s)
        if not schedules:  # no rate: plenty, so the task seldom asks (it tells of 429s at once)
            granted = max(ask.requests, UNPACED_GRANT)
            self._granted_since_change += granted
            return LeaseGrant(granted, per_request * granted, 0.0)
        start = max(s.due() for s in schedules)
        oldest = self._oldest(ask.task, now)
        horizon = now + (LEASE_SECONDS if oldest else YOUNGER_LEASE_SECONDS)
        if start > horizon:
            wait = start - horizon
            if not oldest:  # it may be the oldest before then (see YOUNGER_POLL_S)
                wait = min(wait, YOUNGER_POLL_S * max(1, self.tasks_running - 1))
            return LeaseGrant(0, 0.0, max(MIN_WAIT_S, wait))
        interval = max(intervals)
        granted = ask.requests
        if interval > 0:
            granted = min(granted, 1 + math.floor((horizon - start) / interval))
        if self._requests is not None:
            self._requests.book(start, granted)
        if self._tokens is not None and per_request > 0:
            self._tokens.book(start, granted * per_request)
        self._granted_since_change += granted
        return LeaseGrant(granted, granted * per_request, 0.0, start - now, interval)

    def _even_out(self, peers: HostPeers, now: float) -> None:
        """Even this task's rate out with the other tasks of its host, and slow down with them
        (see `peers`), while it is found from 429s alone: a configured or announced limit is
        split evenly already."""
        if not self._adaptive or self._ceiling is not None or self._token_ceiling is not None:
            return
        rate = self.rate_per_s
        # Another task's decrease on 429s of a burst this task had no part in (it did not
        # slow down on its own lately): this task's part of one decrease for the host.
        may_follow = now >= self._decreased_at + DECREASE_COOLDOWN_S
        evened, follow = peers.even(rate, may_follow=may_follow)
        if rate is None or evened is None or evened == rate:
            return
        if follow is not None:
            self._too_fast = rate
            self._probes = 0
            self._decreased_at = now
            self._new_period(now)
        elif self._too_fast is not None:  # the search aims at the same part of the rate
            self._too_fast *= evened / rate
        self._set_rate(max(MIN_RATE, evened))

    def _oldest(self, task: str, now: float) -> bool:
        """Whether `task` is the oldest of the tasks running (an unnamed one counts as such)."""
        if not task:
            return True
        # A task back after it ended (a retry) keeps its place: its Spark task ends sooner.
        started = (self._tasks.get(task) or self._ended.pop(task, None) or (now, now))[0]
        self._tasks[task] = (started, now)
        gone = [name for name, (_, seen) in self._tasks.items() if now - seen > TASK_GONE_S]
        for name in gone:
            del self._tasks[name]
        if self._ended and now - next(iter(self._ended.values()))[1] > ENDED_KEPT_S:
            self._ended = {k: v for k, v in self._ended.items() if now - v[1] <= ENDED_KEPT_S}
        return (started, task) == min((first, name) for name, (first, _) in self._tasks.items())

    def _learn(self, ask: LeaseAsk, now: float) -> None:
        if self._first_ask is None:
            self._first_ask = self._period_start = now
        self.ok += ask.ok
        if ask.ok or ask.rate_limited:
            if self._first_answer is None:
                self._first_answer = now
            self._recent.append((now, ask.ok, ask.rate_limited))
        while self._recent and self._recent[0][0] < now - DECREASE_COOLDOWN_S:
            self._recent.popleft()
        self.rate_limited += ask.rate_limited
        if self._tokens is not None and ask.token_correction:
            self._tokens.give_back(-ask.token_correction)
        if self._requests is not None and ask.returned:
            self._requests.give_back(ask.returned)
        if ask.endpoint_requests_per_minute:
            announced = ask.endpoint_requests_per_minute / 60.0 * MARGIN
            if self._ceiling is None or announced < self._ceiling:
                self._ceiling = announced
                self._set_rate(min(self.rate_per_s or announced, announced))
                # 429s still to come answer requests sent before the ceiling was known.
                self._decreased_at = now
        if ask.endpoint_tokens_per_minute and self._tokens is None:
            self._token_ceiling = ask.endpoint_tokens_per_minute / 60 * MARGIN
            self._tokens = Schedule(self._token_ceiling, self._clock)
        if self._adaptive:
            self._adapt(ask, now)

    def _adapt(self, ask: LeaseAsk, now: float) -> None:
        self._period_ok += ask.ok
        self._period_limited += ask.rate_limited
        self._since[0] += ask.ok
        self._since[1] += ask.rate_limited
        if self._recount_at is not None and now >= self._recount_at:
            self._recount(now)
        holding = self._holding(now)
        answers = self._period_ok + self._period_limited
        share = self._period_limited / max(1, answers)
        # 429s still answer requests sent before the last decrease for a while: one decrease
        # per burst.
        cooled = now >= self._decreased_at + DECREASE_COOLDOWN_S
        too_many = cooled and answers >= MIN_JUDGED and self._beyond_noise(answers)
        if ask.rate_limited and too_many:
            if not holding:
                self._slow_down(share, now)
            return
        if now - self._period_start < ADAPT_PERIOD_S:
            return
        if share <= self._noise:
            self._speed_up(now)
        elif too_many and not holding and not self._noise:
            # A few 429s in every period at a low rate, none told with enough answers beside
            # it: neither quiet nor judged, the rate would stay where it is for good.
            self._slow_down(share, now)
            return
        elif answers < MIN_JUDGED:
            return  # 429s on too few answers to judge: the period goes on
        self._new_period(now)

    def _beyond_noise(self, answers: int) -> bool:
        """Whether the period's 429s are more than the endpoint's usual share would give by
        chance (two standard deviations more: at 20 answers and 7.5 % usual, a period holding
        three 429s comes one time in five)."""
        usual = answers * self._noise
        return self._period_limited > usual + SIGNIFICANT * math.sqrt(usual * (1 - self._noise))

    def _holding(self, now: float) -> bool:
        """Whether the last decrease is still to be judged on the answers since; judged, it is
        forgotten: it lessened the 429s (it was right), or they grew (the next decrease
        follows), or neither (they are not about the rate: an endpoint failing some requests
        with 429 whatever the rate) — then back to the rate before, and that share is the
        endpoint's usual from then on. The 429s since are weighed against those the share
        before the decrease would have given (see `NOISE_EVIDENCE`, `SIGNIFICANT`)."""
        slowed = self._slowed
        if slowed is None:
            return False
        ok, limited = self._since
        expected = (ok + limited) * slowed.share  # 429s, had slowing down changed nothing
        # In standard deviations of that count (binomial: at a large share, far fewer than a
        # Poisson count's, and a decrease from 83 % to 67 % of 90 answers is plain).
        deviation = (limited - expected) / math.sqrt(max(expected * (1 - slowed.share), 1e-9))
        if not self._sees_all or deviation < -SIGNIFICANT:
            self._slowed = None  # (a budget that does not see every task never calls it noise)
            return False
        if deviation > SIGNIFICANT or now >= self._decreased_at + HOLD_MAX_S:
            self._slowed = None
            return False
        if expected < NOISE_EVIDENCE or now < self._decreased_at + ADAPT_PERIOD_S:
            # Under a known limit (configured, announced) a decrease is a small step, and a
            # 429 beyond it may be slowed for at once; it is judged when the evidence is in.
            return self._ceiling is None and self._token_ceiling is None
        share = limited / max(1, ok + limited)
        self._noise = min(1.0, max(self._noise, share * NOISE_MARGIN))
        log.info("%.1f %% of requests answer 429 whatever the rate: not slowing down for "
                 "those", 100 * share)  # fmt: skip
        self._requests = None if slowed.requests is None else Schedule(slowed.requests, self._clock)
        if self._tokens is not None and slowed.tokens is not None:
            self._tokens.set_rate(slowed.tokens)
            self._token_cap = None
        self._slowed = None
        self._new_period(now)
        return False

    def _slow_down(self, share: float, now: float) -> None:
        """429s beyond the endpoint's usual share: slow down, and judge the decrease on the
        answers that follow (see `_holding`)."""
        tokens = None if self._tokens is None else self._tokens.rate_per_s
        # The share judged against: over the last DECREASE_COOLDOWN_S, not the period that
        # drew this decrease alone (picked for its 429s, it overstates them).
        ok, limited = self._recent_counts()
        usual = limited / max(1, ok + limited) if ok + limited >= MIN_JUDGED else share
        before = self.rate_per_s
        self._since = [0, 0]
        self._probes = 0
        if self._requests is None and self._tokens is not None:  # the token budget binds
            tokens_before = self._tokens.rate_per_s
            self._token_cap = tokens_before * TOKEN_CAP
            self._quiet_at_cap = 0
            self._tokens.set_rate(tokens_before * CONFIGURED_BACKOFF)
            log.info("token rate %.0f/min after 429s (was %.0f/min)",
                     self._tokens.rate_per_s * 60, tokens_before * 60)  # fmt: skip
        else:
            rate = self._decreased(before, now)
            if before is None:
                self._recount_at = now + RECOUNT_AFTER_S
            if self._ceiling is not None:
                rate = min(rate, self._ceiling)
            was = "no rate" if before is None else f"{before * 60:.0f}/min"
            log.info("request rate %.0f/min after 429s (was %s)", rate * 60, was)
            self._set_rate(max(MIN_RATE, rate))
            if self._peers is not None and before is not None:
                self._peers.slowed(max(MIN_RATE, rate) / before)
        self._slowed = _Slowed(usual, before, tokens, self.rate_per_s)
        self._decreased_at = now
        self._new_period(now)

    def _recount(self, now: float) -> None:
        """The first decrease is judged on the first report of a 429, about 0.1 s in, when the
        other tasks have not yet told what they got through in the same window of the
        endpoint's. `RECOUNT_AFTER_S` later every report is in: the successes before that
        decrease (all counted now, less what the new rate may have added since) set the rate,
        when they say more."""
        self._recount_at = None
        rate = self.rate_per_s
        if rate is None or self._first_answer is None:
            return
        # What the new rate sent since may have got through: all of it, less the 429s since
        # (none got through where the endpoint's window is still full from the first burst).
        since = max(0.0, rate * (now - self._decreased_at) - self._since[1])
        span = max(ADAPT_PERIOD_S, self._decreased_at - self._first_answer)
        admitted = (self.ok - since) / span * MARGIN
        if self._ceiling is not None:
            admitted = min(admitted, self._ceiling)
        if admitted > rate * (1 + INCREASE):
            log.info("request rate %.0f/min: the successes before the first 429s counted again "
                     "(was %.0f/min)", admitted * 60, rate * 60)  # fmt: skip
            self._set_rate(admitted)
            self._too_fast = None
            # The 429s still to come answer requests sent at the rate before.
            self._decreased_at = now
            self._new_period(now)

    def _speed_up(self, now: float) -> None:
        """A quiet period: grow a rate that is being used (a job held back by latency or
        concurrency must not earn a rate it would burst into later)."""
        if self._requests is None and self._tokens is not None:
            self._speed_up_tokens(self._tokens)
            return
        current = self.rate_per_s
        if current is None:
            return
        rate = current
        if self._granted_since_change >= 0.5 * current * (now - self._period_start):
            rate = self._increased(current)
        else:
            self._probes = 0
        slowed = self._slowed
        if slowed is not None and slowed.requests is not None and slowed.after is not None:
            # A decrease is judged on the 429s at a rate under the one that drew them (back at
            # that rate, the same 429s would say they come whatever the rate: `_holding`): at
            # most halfway back until then.
            under = (slowed.requests + slowed.after) / 2
            rate = max(current, min(rate, under))
        if self._ceiling is not None:
            rate = min(rate, self._ceiling)
        self._set_rate(max(MIN_RATE, rate))

    def _speed_up_tokens(self, tokens: Schedule) -> None:
        """A quiet period where the token budget binds: a step up, to the ceiling, or after
        429s to just under the rate that drew them (`TOKEN_CAP`), probing past it slowly."""
        ceiling = self._token_ceiling or tokens.rate_per_s
        top = ceiling
        if self._token_cap is not None:
            if tokens.rate_per_s >= self._token_cap:
                self._quiet_at_cap += 1
            if self._quiet_at_cap >= CAP_PATIENCE:
                self._token_cap += ceiling * CAP_PROBE
                self._quiet_at_cap = 0
            if self._token_cap >= ceiling:
                self._token_cap = None
            else:
                top = self._token_cap
        tokens.set_rate(min(top, tokens.rate_per_s + ceiling * CEILING_STEP))

    def _new_period(self, now: float) -> None:
        self._period_start = now
        self._period_ok = self._period_limited = 0
        self._granted_since_change = 0

    def _decreased(self, rate: float | None, now: float) -> float:
        """The rate after 429s; the rate that drew them is where the search back up aims
        (`_too_fast`). With no rate yet, the rate that drew them is the rate answers came at."""
        admitted, answered = self._recent_rates(now)
        drew = max(rate if rate is not None else answered, MIN_RATE)
        self._too_fast = drew
        if self._configured:  # the user's budget is the endpoint's: slow a little
            return drew * CONFIGURED_BACKOFF
        # Going faster than the endpoint was seen to admit only draws more 429s; but the
        # evidence may be thin (reports still to come, another task's share): never more than
        # half off at once.
        return min(drew * BACKOFF, max(admitted, drew * DECREASE))

    def _recent_rates(self, now: float) -> tuple[float, float]:
        """Successes, and answers (successes and 429s), per second over the last
        DECREASE_COOLDOWN_S (pruned in `_learn`), over at least a second: a limit's window is
        seldom shorter."""
        since = now - (self._first_ask if self._first_ask is not None else now)
        span = max(ADAPT_PERIOD_S, min(DECREASE_COOLDOWN_S, since))
        ok, limited = self._recent_counts()
        return ok / span, (ok + limited) / span

    def _recent_counts(self) -> tuple[int, int]:
        """Successes and 429s told in the last DECREASE_COOLDOWN_S (pruned in `_learn`)."""
        return sum(n for _, n, _ in self._recent), sum(n for _, _, n in self._recent)

    def _increased(self, rate: float) -> float:
        # A binary search back towards the rate that last drew 429s, then gentle probing past
        # it; below a known ceiling (configured, or announced) a climb of a few periods.
        step = rate * INCREASE
        if self._ceiling is not None:
            step = max(step, self._ceiling * CEILING_STEP)
        if self._too_fast is not None and rate < self._too_fast * (1 - INCREASE):
            return rate + max(step, (self._too_fast - rate) / 2)
        self._too_fast = None  # quiet at that rate now: probe on
        self._probes += 1
        # Quiet for long, the rate may be far under what the endpoint admits now: a task whose
        # own budget (see `sees_all`) cannot see the others end and leave it their rate, a job
        # whose endpoint others stopped sharing, a first decrease cut too deep.
        growth = 2.0 ** max(0, self._probes - PATIENCE)
        return rate + max(step, rate * min(MAX_PROBE, INCREASE * growth))

    def _set_rate(self, rate: float) -> None:
        if self._requests is None:
            self._requests = Schedule(rate, self._clock)
        else:
            self._requests.set_rate(rate)
