"""Daemons the benchmarks run beside the two MTAs (scanners, milters, DNS servers): each in the foreground as our
child, with its own config under a work dir, on a loopback port; and a counter of the lines they log.

Shared by scan_throughput.py and auth_throughput.py.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from smtp_throughput import free_port, proc_cpu_seconds, process_tree, terminate, wait_serving

ADDR = "127.0.0.1"


class LogCount:
    """Counts the lines of a growing log file that contain a marker, reading only what was added since."""

    def __init__(self, path: Path, markers: dict[str, Callable[[str], bool]]) -> None:
        self.path = path
        self.markers = markers
        self.counts = dict.fromkeys(markers, 0)
        self._offset = 0
        self._partial = ""

    def read(self) -> dict[str, int]:
        if self.path.exists():
            with self.path.open("r", errors="replace") as f:
                f.seek(self._offset)
                chunk = f.read()
                self._offset = f.tell()
            *lines, self._partial = (self._partial + chunk).split("\n")
            for line in lines:
                for name, match in self.markers.items():
                    if match(line):
                        self.counts[name] += 1
        return dict(self.counts)


class Daemon:
    """A daemon run in the foreground as our child, with its own config under `workdir`; `prefix` goes before its
    command (e.g. nsenter, to run it in another mount namespace)."""

    name = "daemon"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port(ADDR)
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"{self.name}.out"
        self.prefix: list[str] = []

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        try:
            socket.create_connection((ADDR, self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def start(self, timeout: float = 120) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen([*self.prefix, *self.command()], stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir)
        out.close()
        wait_serving(self.proc, self.log, " ".join(self.command()), self.ready, timeout)

    def stop(self) -> None:
        terminate(self.proc, 30)

    def cpu_seconds(self) -> float:
        """The daemon's CPU time with all its threads, its live children and the children it has reaped."""
        if self.proc is None:
            return 0.0
        return sum(proc_cpu_seconds(p, reaped=True) for p in process_tree(self.proc.pid))
