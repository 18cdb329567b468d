"""How SMTP acceptor processes tell the queue process about new mail: one line per committed message.

Each acceptor holds one Unix stream connection to the queue process. A stream, not datagrams: Linux queues
only net.unix.max_dgram_qlen (10) datagrams per socket, so under load most notices would be dropped and the
mail would wait for the rescan. The spool stays the only source of truth: a notice lost anyway (the queue
process restarting) costs only latency, because the queue process also rescans the spool periodically and at
start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

log = logging.getLogger("appliance.queue")

COMMITTED = b"Q"
ENVELOPE = b"E"  # like Q, with what the queue process would otherwise read back from the spool file
DELIVERED = b"M"  # mail went straight into a mailbox: wake the IMAP sessions watching it (IDLE)
RELOADED = b"R"
READY = b"U"
MAX_LINE = 256
MAX_ENVELOPE_LINE = 16 * 1024  # a longer envelope (many recipients) is announced by its ID only


class Notifier:
    """The acceptor's end: buffered writes on one stream connection; never blocks the event loop."""

    def __init__(self, writer: asyncio.StreamWriter | None) -> None:
        self._writer = writer

    @classmethod
    async def connect(cls, path: Path) -> Notifier:
        try:
            _, writer = await asyncio.open_unix_connection(str(path))
        except OSError as exc:
            log.warning("notify: cannot reach the queue process at %s (%s); it will find mail by rescanning",
                        path, exc)
            writer = None
        return cls(writer)

    def _send(self, line: bytes) -> None:
        if self._writer is None or self._writer.is_closing():
            return  # the rescan finds the message
        self._writer.write(line + b"\n")

    def committed(self, queue_id: str, envelope: bytes | None = None, data_offset: int = 0, size: int = 0) -> None:
        """A message is in the spool. With its envelope (as written there) and where its data starts, the queue
        process can schedule it without opening the file; the file stays the source of truth."""
        line = COMMITTED + b" " + queue_id.encode()
        if envelope and b"\n" not in envelope:
            full = b"%s %s %d %d %s" % (ENVELOPE, queue_id.encode(), data_offset, size, envelope)
            if len(full) < MAX_ENVELOPE_LINE:
                line = full
        self._send(line)

    def delivered(self, address: str, folder: str = "INBOX") -> None:
        # A tab cannot be part of an address or a folder name: it separates them.
        self._send(DELIVERED + b" " + address.encode("utf-8") + b"\t" + folder.encode("utf-8"))

    def reloaded(self, worker: int, ok: bool) -> None:
        self._send(RELOADED + b" %d %d" % (worker, ok))

    def ready(self, worker: int) -> None:
        self._send(READY + b" %d" % worker)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class Listener(Protocol):
    def on_reloaded(self, worker: int, ok: bool) -> None: ...
    def on_ready(self, worker: int) -> None: ...


class Notice:
    """An ENVELOPE line: the queue ID, where the data starts in the spool file, its size, the envelope JSON."""

    __slots__ = ("data_offset", "envelope", "size")

    def __init__(self, data_offset: int, size: int, envelope: bytes) -> None:
        self.data_offset = data_offset
        self.size = size
        self.envelope = envelope


def _dispatch(line: bytes, on_committed: Callable[[str, Notice | None], None], pool: Listener,
              on_delivered: Callable[[str, str], None] | None = None) -> None:
    kind, _, rest = line.strip().partition(b" ")
    try:
        if kind == ENVELOPE:
            queue_id, offset, size, envelope = rest.split(b" ", 3)
            on_committed(queue_id.decode("ascii"), Notice(int(offset), int(size), envelope))
        elif len(line) > MAX_LINE:
            raise ValueError("line too long")
        elif kind == COMMITTED:
            on_committed(rest.decode("ascii"), None)
        elif kind == DELIVERED:
            if on_delivered is not None:
                address, _, folder = rest.decode("utf-8").partition("\t")
                on_delivered(address, folder or "INBOX")
        elif kind == RELOADED:
            worker, ok = rest.split()
            pool.on_reloaded(int(worker), ok == b"1")
        elif kind == READY:
            pool.on_ready(int(rest))
        else:
            raise ValueError(kind)
    except (ValueError, UnicodeDecodeError):
        log.warning("notify: ignored a malformed line %r", line[:80])


async def listen(path: Path, on_committed: Callable[[str, Notice | None], None], pool: Listener,
                 on_delivered: Callable[[str, str], None] | None = None) -> asyncio.AbstractServer:
    """The queue process's end, a Unix socket at `path` (mode 0600)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                _dispatch(line, on_committed, pool, on_delivered)
        except (ConnectionError, ValueError) as exc:  # ValueError: a line over the reader's limit
            log.warning("notify: connection dropped: %s", exc)
        finally:
            writer.close()

    server = await asyncio.start_unix_server(serve, path=str(path), limit=2 * MAX_ENVELOPE_LINE)
    path.chmod(0o600)
    return server
