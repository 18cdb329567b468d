"""The message model every room shares: a queued message's envelope, its recipients and their states.

A message's bytes live in its spool file (written by ``queue.spool``); ``QueuedMessage`` knows where, and reads
them only when a delivery needs them.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


def new_queue_id() -> str:
    """Sortable by arrival (nanosecond clock in hex) and unique across processes (random suffix)."""
    return f"{time.time_ns():016x}{secrets.token_hex(3)}".upper()


@dataclass
class Recipient:
    """One envelope recipient and its delivery state."""

    address: str
    original: str = ""  # the address given at RCPT TO, before alias expansion (DSN Original-Recipient)
    status: str = PENDING
    attempts: int = 0
    next_attempt: float = 0.0
    last_code: int = 0
    last_text: str = ""
    remote_host: str = ""


# Keys of QueuedMessage.meta, written by whoever commits a message and stored with its envelope.
META_CRLF_ONLY = "crlf_only"  # every line ends in CRLF (the SMTP engine refused others): sent on as it is
META_DOT_FREE = "dot_free"  # no line starts with "." (RFC 5321 §4.5.2: nothing to dot-stuff on the way out)
META_DSN_FOR = "dsn_for"  # a bounce: the queue ID of the message it reports on
META_TLSRPT = "tlsrpt"  # a TLS-RPT report: RFC 8460 §5.3 asks that it be delivered despite TLS policy failures
META_FOLDER = "folder"  # the folder local delivery files the message into instead of INBOX (e.g. "Junk")
# A quarantine verdict (a JSON mapping: who decided, why): the intake holds the message in the quarantine
# instead of delivering it (pipeline/intake.py).
META_QUARANTINE = "quarantine"


@dataclass
class QueuedMessage:
    """Envelope and per-recipient state; the message bytes stay on disk until a delivery needs them."""

    queue_id: str
    mail_from: str
    recipients: list[Recipient]
    arrival: float
    client: str = ""
    helo: str = ""
    smtputf8: bool = False
    size: int = 0
    path: Path = Path()
    data_offset: int = 0
    meta: dict = field(default_factory=dict)

    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.status == PENDING]

    def read_data(self) -> bytes:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size - self.data_offset if self.size <= 0 else self.size
            data = os.pread(fd, size, self.data_offset)  # one read(2), no buffered file object
            while len(data) < size:
                more = os.pread(fd, size - len(data), self.data_offset + len(data))
                if not more:
                    raise SpoolCorrupt(f"{self.path}: message is {len(data)} bytes, header says {size}")
                data += more
            return data
        finally:
            os.close(fd)

    def envelope_json(self) -> bytes:
        return json.dumps({
            "id": self.queue_id, "from": self.mail_from, "arrival": self.arrival, "client": self.client,
            "helo": self.helo, "smtputf8": self.smtputf8, "meta": self.meta,
            "rcpts": [[r.address, r.original] for r in self.recipients],
        }, separators=(",", ":")).encode()


class SpoolCorrupt(Exception):
    """A spool file that is not a complete message (torn write, damaged blocks, foreign file).

    ``queue_id``: the file's name in the spool; ``message``: its envelope, recipient states included, when that
    part of the file is still readable (its sender can then be told), else None.
    """

    def __init__(self, reason: str, queue_id: str = "", message: QueuedMessage | None = None) -> None:
        super().__init__(reason)
        self.queue_id = queue_id
        self.message = message
