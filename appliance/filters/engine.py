"""The filter engine: every configured scanner asked about one message at once, within its timeout, with a
circuit breaker per scanner; what each answered (a Verdict) or why it could not (a Failure) goes to the policy.

- Concurrently: one task per scanner, so a message waits for the slowest scanner, not for their sum.
- ``max_scan_size``: a scanner whose limit (non-zero) is below the message's size is not asked; its answer is a
  Verdict that says so (``skipped``), which the policy writes into the summary header: a message no scanner
  read whole never looks clean (clamd, for one, answers "OK" for a file past its MaxFileSize unless
  AlertExceedsMax is on).
- Errors: a ScanError, an OSError or the timeout is a Failure, and the scanner's ``on_error`` says what the
  policy makes of it. Any other exception is a bug in a scanner: logged with its traceback (once per run of
  failures) and taken as a Failure, never let through to the SMTP session.
- The circuit breaker: ``breaker_failures`` failures in a row open it for ``breaker_pause`` seconds; while it
  is open the scanner is not asked and its on_error applies at once (a daemon that hangs would otherwise cost
  every message its timeout). After the pause one message probes it: an answer closes the breaker, a failure
  opens it for another pause. One WARNING when it opens (with the last error), one INFO when it closes; not a
  line per message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from appliance.config.model import ScannerConfig

from .policy import Answer, Failure
from .scanner import ScanError, Scanner, ScanRequest, Verdict

log = logging.getLogger("appliance.filters")

Clock = Callable[[], float]


class Breaker:
    """The circuit breaker of one scanner (closed: asked; open: not asked until the pause is over; then one
    probe at a time decides). ``clock`` is monotonic seconds, passed in for the tests."""

    def __init__(self, name: str, failures: int, pause: float, clock: Clock = time.monotonic) -> None:
        self.name = name
        self._limit = max(1, failures)
        self._pause = pause
        self._clock = clock
        self.streak = 0  # failures in a row
        self.open_until: float | None = None  # None: closed
        self._probing = False
        self.last_error = ""

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    def allows(self) -> bool:
        """May the scanner be asked now? While open: no, until the pause is over; then one caller probes."""
        if self.open_until is None:
            return True
        if self._probing or self._clock() < self.open_until:
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        if self.open_until is not None:
            log.info("scanner %s answers again; asking it again", self.name)
        self.streak = 0
        self.open_until = None
        self._probing = False

    def abandoned(self) -> None:
        """The scan was cancelled before it ended (its session closed): a probe may be made again."""
        self._probing = False

    def failed(self, error: str) -> None:
        """A failure; the first of a run is logged at INFO, the one that opens the breaker at WARNING."""
        self.streak += 1
        self.last_error = error
        if self.open_until is not None:  # the probe failed: another pause, already said
            self._probing = False
            self.open_until = self._clock() + self._pause
            log.debug("scanner %s still failing: %s", self.name, error)
            return
        if self.streak >= self._limit:
            self.open_until = self._clock() + self._pause
            log.warning("scanner %s failed %d times in a row, last: %s; not asked for %gs (its on_error applies)",
                        self.name, self.streak, error, self._pause)
        elif self.streak == 1:
            log.info("scanner %s failed: %s", self.name, error)
        else:
            log.debug("scanner %s failed: %s", self.name, error)

    def refusal(self) -> str:
        return f"not asked while failing ({self.streak} failures in a row, last: {self.last_error})"


@dataclass(slots=True)
class _Entry:
    config: ScannerConfig
    scanner: Scanner
    breaker: Breaker


class Engine:
    """The scanners of one pipeline, each with its config entry and breaker. ``close`` waits for the scans in
    flight (at most the longest timeout) and closes every scanner."""

    def __init__(self, scanners: Sequence[tuple[ScannerConfig, Scanner]], breaker_failures: int = 5,
                 breaker_pause: float = 30.0, clock: Clock = time.monotonic) -> None:
        self._entries = [_Entry(config, scanner, Breaker(config.name, breaker_failures, breaker_pause, clock))
                         for config, scanner in scanners]
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(entry.config.name for entry in self._entries)

    def breaker(self, name: str) -> Breaker:
        return next(entry.breaker for entry in self._entries if entry.config.name == name)

    async def scan(self, request: ScanRequest) -> tuple[Answer, ...]:
        """Every scanner's answer about ``request.data``, in the order they are configured."""
        if not self._entries:
            return ()
        self._in_flight += 1
        self._idle.clear()
        try:
            size = len(request.data)
            if len(self._entries) == 1:
                return (await self._ask(self._entries[0], request, size),)
            tasks = [asyncio.ensure_future(self._ask(entry, request, size)) for entry in self._entries]
            return tuple(await asyncio.gather(*tasks))
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _ask(self, entry: _Entry, request: ScanRequest, size: int) -> Answer:
        config, breaker = entry.config, entry.breaker
        if config.max_scan_size and size > config.max_scan_size:
            return Verdict(config.name, skipped=f"larger than {config.max_scan_size} bytes")
        if not breaker.allows():
            return Failure(config.name, breaker.refusal(), config.on_error)
        try:
            verdict = await asyncio.wait_for(entry.scanner.scan(request), config.timeout)
            if not isinstance(verdict, Verdict):
                raise TypeError(f"scan() returned {type(verdict).__name__}, not a Verdict")
        except asyncio.CancelledError:  # the session went away: no verdict, and no failure either
            breaker.abandoned()
            raise
        except TimeoutError:
            error = f"{config.address}: no answer within {config.timeout:g}s"
        except ScanError as exc:
            error = str(exc) or type(exc).__name__
        except OSError as exc:
            error = f"{config.address}: {os.strerror(exc.errno) if exc.errno else exc}"
        except Exception as exc:  # a bug in a scanner: a failure of that scanner, never the session's
            if not breaker.streak:
                log.error("scanner %s failed unexpectedly", config.name, exc_info=exc)
            error = f"internal error: {type(exc).__name__}: {exc}"
        else:
            breaker.succeeded()
            if verdict.scanner != config.name:  # the summary and the log name the configured scanner
                verdict = replace(verdict, scanner=config.name)
            return verdict
        breaker.failed(error)
        return Failure(config.name, error, config.on_error)

    async def close(self) -> None:
        """After a reload or at stop: let the scans in flight end, then close the scanners (each on its own)."""
        if self._closed:
            return
        self._closed = True
        longest = max((entry.config.timeout for entry in self._entries), default=0.0)
        try:
            await asyncio.wait_for(self._idle.wait(), longest + 1.0)
        except TimeoutError:
            log.warning("closing the scanners with %d scan(s) still running", self._in_flight)
        for entry in self._entries:
            try:
                await entry.scanner.close()
            except Exception as exc:  # one scanner's cleanup must not keep the others open
                log.error("closing scanner %s failed", entry.config.name, exc_info=exc)
