"""RFC 2920 PIPELINING for the delivery client: MAIL, every RCPT and DATA in one write, then the replies in order.

aiosmtplib sets up our sessions (connect, EHLO, STARTTLS, QUIT), but it holds one reply at a time and drops
what arrives before it is asked for, so it cannot pipeline. For the transaction, ``lend_transport`` hands the
connection to a ``ReplyQueue``, which keeps every reply in order, and gives it back afterwards. Per message that
is two round trips instead of four, and about 0.15 ms less CPU (0.29 -> 0.14 ms for the transaction measured
against smtp-sink on one reused session).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator

import aiosmtplib
from aiosmtplib.errors import SMTPReadTimeoutError, SMTPResponseException, SMTPServerDisconnected

MAX_REPLY_LINE = 8192  # RFC 5321 §4.5.3.1.5 allows 512; anything far longer is not an SMTP server


class ReplyQueue(asyncio.Protocol):
    """Parses the peer's replies (multi-line ones joined with newlines, as aiosmtplib does) into a queue."""

    def __init__(self, inner: asyncio.BaseProtocol) -> None:
        self._inner = inner
        self._buf = bytearray()
        self._lines: list[str] = []
        self._ready: deque[aiosmtplib.SMTPResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.error: Exception | None = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while (end := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[: end + 1])
            del self._buf[: end + 1]
            code = line[:3]
            if not code.isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                self._fail(SMTPResponseException(-1, f"Malformed SMTP response line: {line[:80]!r}"))
                return
            self._lines.append(line[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape"))
            if line[3:4] != b"-":
                self._ready.append(aiosmtplib.SMTPResponse(int(code), "\n".join(self._lines)))
                self._lines = []
        if len(self._buf) > MAX_REPLY_LINE:
            self._fail(SMTPResponseException(-1, "Response too long"))
        self._wake()

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SMTPServerDisconnected("Connection lost"))
        self._inner.connection_lost(exc)  # aiosmtplib must learn it too: the session is gone

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def reply(self, timeout: float) -> aiosmtplib.SMTPResponse:
        """The next reply in order; SMTPReadTimeoutError after ``timeout`` seconds of waiting for it."""
        while not self._ready:
            if self.error is not None:
                raise self.error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except TimeoutError:
                raise SMTPReadTimeoutError("Timed out waiting for server response") from None
            finally:
                self._waiter = None
        return self._ready.popleft()

    @property
    def in_step(self) -> bool:
        """Nothing unread and nothing gone wrong: the session may carry another transaction."""
        return self.error is None and not self._ready and not self._buf and not self._lines


@contextlib.contextmanager
def lend_transport(smtp: aiosmtplib.SMTP) -> Iterator[tuple[ReplyQueue, asyncio.WriteTransport]]:
    """The session's transport with a ReplyQueue reading it; aiosmtplib gets it back when the block ends, or
    the session is closed when the block failed or left replies unread (it is out of step)."""
    protocol = smtp.protocol
    transport = getattr(protocol, "transport", None)
    if protocol is None or transport is None or transport.is_closing():
        raise SMTPServerDisconnected("Connection lost")
    replies = ReplyQueue(protocol)
    transport.set_protocol(replies)
    in_step = False
    try:
        yield replies, transport
        in_step = replies.in_step
    finally:
        if not transport.is_closing():
            transport.set_protocol(protocol)
        if not in_step:
            smtp.close()
