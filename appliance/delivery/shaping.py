"""Per destination shaping: how many sessions and how many messages a minute go to one domain or mail provider,
and the back-off after a reply that says "you are sending too fast".

A destination is a key: the entry of `shaping.destinations` that the recipient domain falls under, else the one
an MX host name falls under (``google.com`` covers ``aspmx.l.google.com``, so that gmail.com and every Google
Workspace domain share one budget), else the recipient domain itself with the `default` budget. This is
Postfix's per-destination concurrency and rate delay (default_destination_concurrency_limit,
default_destination_rate_delay) with the provider as the destination where the administrator names one.

A throttling reply from a peer (a temporary X.7.X code, as 421 4.7.0, or a configured text) puts the key in
back-off:
no new session until it ends, its mail deferred locally with 451 4.4.5 and a "retry after" the queue runner
honours. The back-off starts at `backoff`, doubles while throttling continues, up to `backoff_max`, and a clean
delivery resets it, as Postfix's dead-destination throttling does with its cohorts.

A delivery waits for a session slot or a rate token at most `max_wait`, then is deferred to when the
destination has room: a long wait in the delivery task would hold one of the queue runner's slots and starve
the other destinations (head-of-line blocking), while a short one smooths a burst without a round trip
through the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from appliance.config.model import ShapingConfig, ShapingLimits

log = logging.getLogger("appliance.shaping")

PRUNE_AT = 10_000  # destinations remembered before the idle ones are forgotten


class Reply(Protocol):
    """What the shaper reads of a result (delivery.client.RcptResult has it)."""

    @property
    def code(self) -> int: ...
    @property
    def enhanced(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def remote_host(self) -> str | None: ...


@dataclass(frozen=True)
class Deferral:
    """Why a delivery does not go now, and the wall-clock time when it may."""

    code: int
    enhanced: str
    text: str
    retry_after: float


# ---------------------------------------------------------------------------------------------- matching


def covering(name: str, entries: Iterable[str] | dict[str, object]) -> str | None:
    """The most specific entry that `name` is, or falls under (``aspmx.l.google.com`` under ``google.com``)."""
    labels = name.lower().rstrip(".").split(".")
    for i in range(len(labels) - 1):  # a bare TLD is never an entry (the loader takes domains only)
        candidate = ".".join(labels[i:])
        if candidate in entries:
            return candidate
    return None


def destination_key(domain: str | None, mx_names: Iterable[str], entries: dict[str, object] | Iterable[str]
                    ) -> str:
    """The destination's key: the entry covering the recipient domain, else the entry covering the first MX
    (in preference order) that one covers, else the recipient domain (without one: the first host name)."""
    names = list(mx_names)
    if entries:
        if domain is not None and (found := covering(domain, entries)) is not None:
            return found
        for name in names:
            if (found := covering(name, entries)) is not None:
                return found
    if domain is not None:
        return domain.lower()
    return names[0].lower() if names else ""


# ---------------------------------------------------------------------------------------------- rate


class TokenBucket:
    """A message rate as the generic cell rate algorithm: one token every `interval` seconds, at most `burst`
    saved up. Over any span of T seconds it grants at most burst + T / interval; with burst 1 the messages are
    evenly spaced, as Postfix's rate delay does. It keeps one number (the theoretical arrival time), so it
    neither drifts nor needs a timer."""

    def __init__(self, per_minute: int, burst: int = 1, now: float = 0.0) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.interval = 60.0 / per_minute
        self._tolerance = (burst - 1) * self.interval
        self._tat = now

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: now)."""
        return max(0.0, self._tat - self._tolerance - now)

    def take(self, now: float) -> bool:
        """Take a token if there is one."""
        if self.wait(now) > 0:
            return False
        self._tat = max(self._tat, now) + self.interval
        return True

    def full(self, now: float) -> bool:
        """Nothing spent is still owed: forgetting the bucket now changes nothing."""
        return self._tat <= now


# ---------------------------------------------------------------------------------------------- state


@dataclass
class _Destination:
    limits: ShapingLimits
    bucket: TokenBucket | None = None
    in_use: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    backoff_until: float = 0.0
    backoff_step: float = 0.0  # the last back-off's length; 0: no throttling since the last clean delivery
    reason: str = ""

    def idle(self, now: float, backoff_max: float) -> bool:
        return (not self.in_use and not self.waiters and (self.bucket is None or self.bucket.full(now))
                and self.backoff_until + backoff_max <= now)


class Shaper:
    """The budgets and back-offs of every destination, shared by every delivery of the process (one instance
    outlives config reloads, so that a back-off and the sessions in use are kept)."""

    def __init__(self, config: ShapingConfig, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        """`clock`: wall-clock seconds (a retry time goes into the queue's state); `sleep` waits on that
        clock. Both are injected by tests."""
        self._clock = clock
        self._sleep = sleep
        self._states: dict[str, _Destination] = {}
        self.reconfigure(config)

    def reconfigure(self, config: ShapingConfig) -> None:
        """A new config: new budgets from the next delivery on; back-offs in progress and sessions in use stay."""
        self.config = config
        self._entries = dict(config.destinations)
        self._throttle = re.compile("|".join(f"(?:{t})" for t in config.throttle_texts), re.IGNORECASE) \
            if config.throttle_texts else None
        for key, state in self._states.items():
            limits = self._limits(key)
            if limits != state.limits:
                state.limits = limits
                state.bucket = TokenBucket(limits.messages_per_minute, now=self._clock()) \
                    if limits.messages_per_minute else None
        self._wake_all()

    def key_for(self, domain: str | None, mx_names: Iterable[str]) -> str:
        return destination_key(domain, mx_names, self._entries)

    def _limits(self, key: str) -> ShapingLimits:
        return self._entries.get(key) or self.config.default

    def _state(self, key: str) -> _Destination:
        state = self._states.get(key)
        if state is None:
            if len(self._states) >= PRUNE_AT:
                self._prune()
            limits = self._limits(key)
            bucket = TokenBucket(limits.messages_per_minute, now=self._clock()) if limits.messages_per_minute \
                else None
            state = self._states[key] = _Destination(limits, bucket)
        return state

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._states.items() if s.idle(now, self.config.backoff_max)]:
            del self._states[key]

    # ------------------------------------------------------------------ admission

    def backoff_of(self, key: str) -> float:
        """The wall-clock end of the key's back-off; 0 when it is not in one."""
        state = self._states.get(key)
        return state.backoff_until if state is not None and state.backoff_until > self._clock() else 0.0

    @contextlib.asynccontextmanager
    async def session(self, key: str) -> AsyncIterator[Deferral | None]:
        """Hold one session slot of `key` and one rate token for the delivery inside; yields None to go on,
        or the Deferral to answer for every recipient (then nothing is held)."""
        state = self._states.get(key)
        if state is None:
            limits = self._limits(key)
            if not limits.connections and not limits.messages_per_minute:
                yield None  # nothing to count and no back-off: the common case costs one lookup
                return
            state = self._state(key)
        deadline = self._clock() + self.config.max_wait
        deferral = self._in_backoff(key, state)
        if deferral is None:
            deferral = await self._take_slot(key, state, deadline)
        if deferral is not None:
            yield deferral
            return
        try:
            deferral = self._in_backoff(key, state) or await self._take_token(key, state, deadline)
            yield deferral
        finally:
            self._release(key, state)

    def _in_backoff(self, key: str, state: _Destination) -> Deferral | None:
        if state.backoff_until <= self._clock():
            return None
        return Deferral(451, "4.4.5", f"delivery to {key} suspended until {_stamp(state.backoff_until)} after a "
                                      f"throttling reply: {state.reason}", state.backoff_until)

    async def _take_slot(self, key: str, state: _Destination, deadline: float) -> Deferral | None:
        limit = state.limits.connections
        if not limit or (state.in_use < limit and not state.waiters):
            state.in_use += 1
            return None
        waiter = asyncio.get_running_loop().create_future()
        state.waiters.append(waiter)
        try:
            # Real time, not the clock: the slot frees when another session ends, which no clock tells.
            await asyncio.wait_for(asyncio.shield(waiter), max(0.0, deadline - self._clock()))
        except TimeoutError:
            if waiter.done():  # handed over just as the wait ended: take it after all
                return None
            return Deferral(451, "4.4.5", f"{key} has {limit} session(s) in use, the limit: deferred",
                            self._clock() + max(self.config.max_wait, 1.0))
        except asyncio.CancelledError:
            if waiter.done():  # the slot was handed over to a delivery that stops: pass it on
                self._release(key, state)
            raise
        finally:
            with contextlib.suppress(ValueError):
                state.waiters.remove(waiter)
        return None

    def _release(self, key: str, state: _Destination) -> None:
        """A session ends: its slot goes to the first waiter (the count stays), or is freed."""
        while state.waiters:
            waiter = state.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        state.in_use -= 1
        if state.idle(self._clock(), self.config.backoff_max) and self._states.get(key) is state:
            del self._states[key]

    def _wake_all(self) -> None:
        """After a reload the limits may be higher: hand free slots to waiters."""
        for state in self._states.values():
            limit = state.limits.connections
            while state.waiters and (not limit or state.in_use < limit):
                waiter = state.waiters.popleft()
                if not waiter.done():
                    state.in_use += 1
                    waiter.set_result(None)

    async def _take_token(self, key: str, state: _Destination, deadline: float) -> Deferral | None:
        while state.bucket is not None and not state.bucket.take(self._clock()):
            now = self._clock()
            wait = state.bucket.wait(now)
            if now + wait > deadline:
                return Deferral(451, "4.4.5", f"rate limit of {state.limits.messages_per_minute} message(s) a "
                                              f"minute to {key}: deferred until {_stamp(now + wait)}", now + wait)
            await self._sleep(wait)
        return None

    # ------------------------------------------------------------------ outcomes

    def throttling(self, result: Reply) -> bool:
        """A peer's temporary reply that means "slow down": an X.7.X security or policy code (RFC 3463 §3.8:
        Gmail's 421 4.7.0 and 4.7.28, Microsoft's 451 4.7.500 "server busy"), or a configured text. A 421 of
        another class is about the host, not us (421 4.3.2 "shutting down", a primary in maintenance): the
        route's retry schedule and the next MX handle it. Our own 4xx (a connection that failed) is never one;
        452 4.5.3 "too many recipients" is not either."""
        if result.remote_host is None or not 400 <= result.code < 500:
            return False
        if result.enhanced.startswith("4.7."):
            return True
        return self._throttle is not None and self._throttle.search(result.text) is not None

    def observe(self, key: str, results: Iterable[Reply]) -> None:
        """One session's outcome: a throttling reply starts (or doubles) the back-off; a clean delivery ends it."""
        delivered = False
        for result in results:
            if self.throttling(result):
                self._back_off(key, result)
                return
            delivered = delivered or 200 <= result.code < 300
        if delivered:
            state = self._states.get(key)
            if state is not None and state.backoff_step:
                log.info("shaping: %s delivers again, back-off reset", key)
                state.backoff_step = 0.0
                state.backoff_until = 0.0

    def _back_off(self, key: str, result: Reply) -> None:
        state = self._state(key)
        now = self._clock()
        if state.backoff_until > now:
            return  # another session of this back-off's time: it does not double it again
        step = min(state.backoff_step * 2, self.config.backoff_max) if state.backoff_step else self.config.backoff
        state.backoff_step = step
        state.backoff_until = now + step
        state.reason = f"{result.code} {result.enhanced} {result.text} (from {result.remote_host})"
        log.warning("shaping: %s throttles (%s); no new session for %d s, until %s", key, state.reason,
                    int(step), _stamp(state.backoff_until))


def _stamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["Deferral", "Shaper", "TokenBucket", "covering", "destination_key"]
