"""SMTP acceptor processes: `mailfleet smtp-worker` children of the queue process, one per CPU by default.

The queue process binds the listening sockets and passes them down; every acceptor accepts on all of them and
the kernel shares the connections out. An acceptor that dies is started again; when the queue process dies,
the acceptors die with it (PR_SET_PDEATHSIG), so a kill -9 of `mailfleet serve` stops the whole service,
exactly as it would with one process.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("appliance.smtp")

PR_SET_PDEATHSIG = 1
RESPAWN_DELAY = 1.0


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent goes; exit at once if it already went."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:
        os._exit(1)


class AcceptorPool:
    """Starts, watches, signals and stops the acceptor processes."""

    def __init__(self, config_path: Path, snapshot: Path, count: int, sockets: dict[str, list[socket.socket]],
                 notify_path: Path, on_exit: Callable[[int], None] | None = None) -> None:
        self.config_path = config_path
        self.on_exit = on_exit  # told the index of an acceptor that exited, before it is started again
        self.snapshot = snapshot
        self.count = count
        self.sockets = sockets
        self.notify_path = notify_path
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._watchers: set[asyncio.Task] = set()
        self._stopping = False
        self._acks: dict[int, bool] = {}
        self._acked = asyncio.Event()
        # Config generations: an acceptor that was still starting when a reload came is told once it is ready.
        self._generation = 0
        self._started_at: dict[int, int] = {}
        self._ready: set[int] = set()

    async def start(self) -> None:
        for index in range(self.count):
            await self._spawn(index)

    async def _spawn(self, index: int) -> None:
        spec = ",".join(f"{name}:{s.fileno()}" for name, socks in self.sockets.items() for s in socks)
        fds = [s.fileno() for socks in self.sockets.values() for s in socks]
        argv = [sys.executable, "-m", "appliance.cli.main", "--config", str(self.config_path), "smtp-worker",
                "--snapshot", str(self.snapshot), "--index", str(index), "--workers", str(self.count),
                "--fds", spec, "--notify", str(self.notify_path)]
        proc = await asyncio.create_subprocess_exec(*argv, pass_fds=fds, stdin=asyncio.subprocess.DEVNULL)
        self._procs[index] = proc
        self._ready.discard(index)
        self._started_at[index] = self._generation  # it reads the snapshot current now
        watcher = asyncio.create_task(self._watch(index, proc), name=f"smtp-worker-{index}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, index: int, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self.on_exit is not None:
            self.on_exit(index)
        if self._stopping:
            return
        log.error("SMTP worker %d (pid %d) exited with %s; starting it again", index, proc.pid, code)
        await asyncio.sleep(RESPAWN_DELAY)
        if not self._stopping:
            await self._spawn(index)

    def _signal(self, signum: int, only: set[int] | None = None) -> None:
        for index, proc in self._procs.items():
            if proc.returncode is None and (only is None or index in only):
                proc.send_signal(signum)

    def on_ready(self, index: int) -> None:
        self._ready.add(index)
        if self._started_at.get(index, 0) < self._generation:
            self._signal(signal.SIGHUP, {index})
        else:
            self._acknowledge(index, True)  # started on the current snapshot: already up to date

    def on_reloaded(self, index: int, ok: bool) -> None:
        self._started_at[index] = self._generation
        self._acknowledge(index, ok)

    def _acknowledge(self, index: int, ok: bool) -> None:
        self._acks[index] = ok
        if len(self._acks) >= self.count:
            self._acked.set()

    async def reload(self, timeout: float = 10.0) -> int:
        """SIGHUP every ready acceptor (the others on arrival) and wait for all answers; how many reloaded."""
        self._generation += 1
        self._acks = {}
        self._acked.clear()
        self._signal(signal.SIGHUP, set(self._ready))
        try:
            await asyncio.wait_for(self._acked.wait(), timeout)
        except TimeoutError:
            log.warning("reload: %d of %d SMTP workers answered", len(self._acks), self.count)
        return sum(self._acks.values())

    async def stop(self, grace: float) -> None:
        """SIGTERM: each acceptor drains its sessions; what is still running after the grace period is killed."""
        self._stopping = True
        self._signal(signal.SIGTERM)
        waits = [proc.wait() for proc in self._procs.values()]
        if waits:
            _, pending = await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=grace + 5)
            if pending:
                self._signal(signal.SIGKILL)
                await asyncio.wait(pending, timeout=5)
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
