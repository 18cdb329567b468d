"""Waiting for a state instead of sleeping for a guess: poll quickly, and on timeout name what never happened.

A fixed sleep is either too short on a loaded machine (the test flakes) or too long on a quiet one (the suite
crawls); a poll on the state the test needs is neither. `wait_until` is for threads and plain tests,
`wait_until_async` for coroutines that must keep their event loop running while they wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

POLL = 0.01  # seconds between looks: short enough to add nothing noticeable to a test


class WaitTimeout(AssertionError):
    """The state a test waited for did not come; the message says which."""


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "the condition",
               detail: Callable[[], str] | None = None) -> object:
    """Return the predicate's first true value; raise WaitTimeout naming `what` after `timeout` seconds.

    `detail` is called only on timeout, for context worth printing (a server's log, a peer's state).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(_message(what, timeout, detail))
        time.sleep(POLL)


async def wait_until_async(predicate: Callable[[], object], timeout: float = 10.0, what: str = "the condition",
                           detail: Callable[[], str] | None = None) -> object:
    """As wait_until, yielding to the event loop between looks."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(_message(what, timeout, detail))
        await asyncio.sleep(POLL)


def _message(what: str, timeout: float, detail: Callable[[], str] | None) -> str:
    text = f"timed out after {timeout:g}s waiting for {what}"
    return f"{text}\n{detail()}" if detail else text
