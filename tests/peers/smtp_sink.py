"""Real SMTP sinks (aiosmtpd) on loopback that record what they receive and answer as the test scripts.

Use as a pytest plugin (`pytest_plugins = ["peers.smtp_sink"]`) for the `smtp_sink` and `refusing_smtp`
fixtures, or call `start_sink()` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from waits import WaitTimeout, wait_until_async

from .named import free_port

__all__ = ["ReceivedMessage", "Sink", "SinkHandler", "free_port", "start_sink", "start_refusing_server"]


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    peer_address: str  # the client's source IP, to check source address binding
    mail_options: tuple[str, ...]
    tls: bool
    helo: str


@dataclass
class SinkHandler:
    """aiosmtpd handler: per-address RCPT replies, a scripted DATA reply, a hold to overlap sessions.

    `hold` alone keeps every DATA waiting that long (a slow peer); with `hold_until_active` a DATA waits only
    until that many sessions are open at once (at most `hold` seconds), so that sessions overlap for sure
    however busy the machine, and no longer than they must.
    """

    rcpt_replies: Mapping[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    hold: float = 0.0
    hold_until_active: int = 0
    max_rcpts: int = 0  # >0: answer 452 4.5.3 beyond this many recipients per transaction
    pipelining: bool = False  # announce PIPELINING (RFC 2920); aiosmtpd reads pipelined commands in order
    messages: list[ReceivedMessage] = field(default_factory=list)
    rcpts: list[str] = field(default_factory=list)  # every RCPT TO address, in order, whatever the reply
    sessions: int = 0
    active: int = 0
    max_active: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _count_session(self, server: SMTP) -> None:
        if not getattr(server, "_sink_counted", False):
            server._sink_counted = True  # type: ignore[attr-defined]
            with self._lock:
                self.sessions += 1
                self.active += 1
                self.max_active = max(self.max_active, self.active)

    def session_ended(self, server: SMTP) -> None:
        if getattr(server, "_sink_counted", False):
            server._sink_counted = False  # type: ignore[attr-defined]
            with self._lock:
                self.active -= 1

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses):
        self._count_session(server)
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str) -> str:
        self._count_session(server)
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_RCPT(self, server, session, envelope: Envelope, address: str, rcpt_options) -> str:
        self.rcpts.append(address)
        reply = self.rcpt_replies.get(address.lower())
        if reply:
            return reply
        if self.max_rcpts and len(envelope.rcpt_tos) >= self.max_rcpts:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.hold_until_active:
            with contextlib.suppress(WaitTimeout):
                await wait_until_async(lambda: self.active >= self.hold_until_active, self.hold)
        elif self.hold:
            await asyncio.sleep(self.hold)  # the slow peer is the thing under test
        if self.data_reply:
            return self.data_reply
        data = envelope.original_content or b""
        self.messages.append(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=data,
                peer_address=session.peer[0],
                mail_options=tuple(envelope.mail_options),
                tls=session.ssl is not None,
                helo=session.host_name or "",
            )
        )
        return "250 2.0.0 OK queued"


class _SinkSMTP(SMTP):
    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self.event_handler.session_ended(self)


class _SinkController(Controller):
    sink_hostname = "sink.test"

    def factory(self) -> SMTP:
        # An explicit name: aiosmtpd would otherwise ask the system resolver (socket.getfqdn).
        return _SinkSMTP(self.handler, hostname=self.sink_hostname, **self.SMTP_kwargs)


@dataclass
class Sink:
    address: str
    port: int
    handler: SinkHandler
    controller: Controller = field(repr=False)

    @property
    def messages(self) -> list[ReceivedMessage]:
        return self.handler.messages

    stopped: bool = False

    def stop(self) -> None:
        """Stop listening and drop open sessions; a second call does nothing."""
        if not self.stopped:
            self.stopped = True
            self.controller.stop()


def start_sink(
    address: str = "127.0.0.1",
    port: int | None = None,
    *,
    tls_context: ssl.SSLContext | None = None,
    smtputf8: bool = True,
    size_limit: int | None = None,
    rcpt_replies: Mapping[str, str] | None = None,
    data_reply: str | None = None,
    hold: float = 0.0,
    hold_until_active: int = 0,
    max_rcpts: int = 0,
    hostname: str = "sink.test",
    pipelining: bool = False,
) -> Sink:
    """An aiosmtpd sink; `tls_context` offers STARTTLS; `size_limit` is announced in EHLO SIZE."""
    port = port or free_port([address])
    handler = SinkHandler(
        rcpt_replies={k.lower(): v for k, v in (rcpt_replies or {}).items()},
        data_reply=data_reply,
        hold=hold,
        hold_until_active=hold_until_active,
        max_rcpts=max_rcpts,
        pipelining=pipelining,
    )
    controller = _SinkController(
        handler,
        hostname=address,
        port=port,
        tls_context=tls_context,
        require_starttls=False,
        enable_SMTPUTF8=smtputf8,
        data_size_limit=size_limit,
        decode_data=False,
        ident="sink.test ESMTP",
    )
    controller.sink_hostname = hostname
    controller.start()
    return Sink(address, port, handler, controller)


class _RefusingServer:
    """A plain TCP peer that greets with a fixed reply (e.g. 421) and closes: the busy or hostile MX."""

    def __init__(self, address: str, port: int, greeting: bytes) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((address, port))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self._greeting = greeting
        self._stop = threading.Event()
        self.connections = 0
        self.times: list[float] = []  # monotonic time of each connection, to check retry schedules
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            self.times.append(time.monotonic())
            with conn:
                conn.sendall(self._greeting)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


def start_refusing_server(address: str, port: int, greeting: str = "421 4.3.2 busy, try later") -> _RefusingServer:
    return _RefusingServer(address, port, greeting.encode() + b"\r\n")


@pytest.fixture
def smtp_sink() -> Iterator[Callable[..., Sink]]:
    """`smtp_sink(address="127.0.0.31", port=p, tls_context=..., rcpt_replies={...})` -> a running Sink."""
    sinks: list[Sink] = []

    def start(address: str = "127.0.0.1", port: int | None = None, **kwargs) -> Sink:
        sink = start_sink(address, port, **kwargs)
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        sink.stop()


@pytest.fixture
def refusing_smtp() -> Iterator[Callable[..., _RefusingServer]]:
    """`refusing_smtp(address, port, "421 busy")` -> a peer that only greets with that reply."""
    servers: list[_RefusingServer] = []

    def start(address: str, port: int, greeting: str = "421 4.3.2 busy, try later") -> _RefusingServer:
        server = start_refusing_server(address, port, greeting)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
