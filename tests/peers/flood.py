"""A client that pipelines commands and does not read the replies, and the server's memory as /proc shows it.

The attack of issue 15 (150 MB of pipelined NOOP never read: the service's RSS 140 -> 481 MB). `Flood` sends as
much as the connection takes, from a given source address, and stops once a send has made no progress for
`stall` seconds (the server has stopped reading: TCP holds the client back); then it reads every reply. Its own
socket buffers are small, so that what waits in the kernel is mostly on the server's side.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

BUFFER = 64 * 1024  # the client's SO_SNDBUF / SO_RCVBUF


def vm_status(pid: int, field: str) -> int:
    """A /proc/PID/status memory figure (VmRSS, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> int:
    """Reset VmHWM to the current RSS (proc(5), clear_refs "5") and return it, so that a later peak is the
    test's; on a kernel without it the peak includes start-up, which only makes a bound stricter."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass
    return vm_status(pid, "VmHWM")


class Flood:
    def __init__(self, port: int, source: str, stall: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.stall = stall
        self.sent = 0

    def send_until_stalled(self, payload: bytes) -> int:
        """Send `payload` without reading, as far as the connection takes it; the bytes sent."""
        self.sock.settimeout(self.stall)
        view = memoryview(payload)
        try:
            while self.sent < len(payload):
                self.sent += self.sock.send(view[self.sent: self.sent + 1024 * 1024])
        except TimeoutError:
            pass
        return self.sent

    def finish(self, rest: bytes, timeout: float = 180) -> bytes:
        """Read at last: send `rest` (the end of the command cut short, the logout) while reading every reply until
        the server closes; all that was received."""
        chunks: list[bytes] = []

        def read() -> None:
            while chunk := self.sock.recv(1 << 20):
                chunks.append(chunk)

        self.sock.settimeout(timeout)
        reader = threading.Thread(target=read)
        reader.start()
        self.sock.sendall(rest)
        reader.join(timeout)
        assert not reader.is_alive(), "the replies did not end with the connection"
        self.sock.close()
        return b"".join(chunks)
