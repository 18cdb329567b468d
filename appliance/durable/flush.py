"""Group commit of filesystem flushes, shared by everything one process writes to a filesystem.

A writer that needs its files on disk asks for a flush and awaits it. One thread per filesystem runs
syncfs(2) for every request that arrived while the previous flush was running, so the spool's commits, the
mailboxes' file writes and their index commits in one process share the cost of the disk flush instead of
queueing on it one by one. A request is answered by a flush that *started* after it was made, never by one
already running (whose start may predate the caller's writes).
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from appliance.durable.files import sync_filesystem


class GroupFlush:
    """The flusher of one filesystem (see the module docstring); obtain it with ``flusher_for(path)``. Its
    thread lives as long as the process (a daemon thread, idle on a condition when nobody waits)."""

    def __init__(self, directory: Path) -> None:
        self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        self._cond = threading.Condition()
        self._waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._thread = threading.Thread(target=self._run, name="fs-flush", daemon=True)
        self._thread.start()

    def request(self) -> asyncio.Future[None]:
        """A future that completes once everything written before this call is on disk (or fails with the
        OSError of the flush)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            self._waiting.append((loop, future))
            self._cond.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
                batch, self._waiting = self._waiting, []
            error: OSError | None = None
            try:
                sync_filesystem(self._fd)
            except OSError as exc:  # pragma: no cover - disk failure
                error = exc
            for loop, future in batch:
                try:
                    loop.call_soon_threadsafe(_settle, future, error)
                except RuntimeError:  # that loop is closed: nobody waits any more
                    pass


def _settle(future: asyncio.Future[None], error: OSError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


_flushers: dict[int, GroupFlush] = {}
_registry_lock = threading.Lock()


def flusher_for(path: Path) -> GroupFlush:
    """The process's flusher for the filesystem holding the directory ``path`` (created on first use)."""
    device = os.stat(path).st_dev
    with _registry_lock:
        flusher = _flushers.get(device)
        if flusher is None:
            flusher = _flushers[device] = GroupFlush(path)
        return flusher
