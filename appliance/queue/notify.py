"""How SMTP acceptor processes tell the queue process about new mail: one datagram per committed message.

The spool stays the only source of truth. A datagram is a hint that saves the queue process from polling; a
lost one (queue process busy, restarting) costs only latency, because the queue process also rescans the
spool periodically and at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("appliance.queue")

COMMITTED = b"Q"
RELOADED = b"R"


class Notifier:
    """The acceptor's end: fire-and-forget datagrams to the queue process."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def _send(self, payload: bytes) -> None:
        try:
            self._sock.sendto(payload, self.path)
        except OSError as exc:  # queue process down or its buffer full: the rescan finds the message
            log.debug("notify %s: %s", self.path, exc)

    def committed(self, queue_id: str) -> None:
        self._send(COMMITTED + b" " + queue_id.encode())

    def reloaded(self, worker: int, ok: bool) -> None:
        self._send(RELOADED + b" %d %d" % (worker, ok))

    def close(self) -> None:
        self._sock.close()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_committed: Callable[[str], None], on_reloaded: Callable[[int, bool], None]) -> None:
        self._on_committed = on_committed
        self._on_reloaded = on_reloaded

    def datagram_received(self, data: bytes, addr: object) -> None:
        kind, _, rest = data.partition(b" ")
        try:
            if kind == COMMITTED:
                self._on_committed(rest.decode("ascii"))
            elif kind == RELOADED:
                worker, ok = rest.split()
                self._on_reloaded(int(worker), ok == b"1")
        except (ValueError, UnicodeDecodeError):
            log.warning("notify: ignored a malformed datagram %r", data[:80])


async def listen(path: Path, on_committed: Callable[[str], None],
                 on_reloaded: Callable[[int, bool], None]) -> asyncio.DatagramTransport:
    """The queue process's end, bound at `path` (mode 0600)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    path.chmod(0o600)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(on_committed, on_reloaded), sock=sock)
    return transport
