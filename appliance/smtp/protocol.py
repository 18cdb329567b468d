"""The SMTP server engine: one asyncio.Protocol per connection, driven by data_received callbacks.

A command is handled inside the callback that received it, and only the steps that really wait (committing a
message, checking a password, the TLS handshake) run as a task; commands that arrive meanwhile (PIPELINING) wait
in the buffer and are answered in order. Replies to one batch of pipelined commands go out in one write (at
most REPLY_BATCH of them; a client that does not read them is held back, see pause_writing). A
coroutine per session awaiting a StreamReader for each line, as aiosmtpd's engine does, costs three times the
CPU per message for the same replies (the figures are in the README's Dependencies section).

Connection state is ``Session``, transaction state ``Envelope`` (reset by RSET, HELO/EHLO, the end of DATA
and STARTTLS); the decisions (accept a sender or a recipient, store the message, check a password) belong to
the handler (``smtp.server.InboundHandler``); the parsing to ``smtp.commands``. The replies, their wording
included, are aiosmtpd's, the reference the tests compare the command parser with.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from appliance.config.model import SMTPConfig
from appliance.message import codes
from appliance.message.lines import MAX_DATA_LINE, scan_lines
from appliance.smtp.commands import (
    COMMAND_LIMIT,
    LINE_TOO_LONG,
    MAIL_LIMIT_EXTENDED,
    READ_LIMIT,
    CommandError,
    MailParams,
    check_mail_params,
    parse_command,
    parse_params,
    parse_path,
    strip_keyword,
)

log = logging.getLogger("appliance.smtp")

# RFC 3207 §4: before STARTTLS on a port that requires it, only these commands are served.
ALLOWED_BEFORE_STARTTLS = frozenset({"NOOP", "EHLO", "STARTTLS", "QUIT"})
BOGUS_LIMIT = 5  # unknown commands before we hang up
REFUSED_COMMAND_LIMIT = 20  # commands a screened-out client is refused before we hang up (postscreen's
                            # postscreen_command_count_limit)
PENDING_LIMIT = 64 * 1024  # pipelined bytes we buffer while a command waits, before we stop reading
# Replies to one batch of pipelined commands written at once; past this many, they go out and, when the
# transport's buffer is over its high-water mark (the client does not read), reading stops until it drains.
REPLY_BATCH = 256
SASL_LINE_LIMIT = 12 * 1024  # RFC 4954 §4: a SASL response line; far above what PLAIN/LOGIN need
HELP_TEXT = {
    "AUTH": "AUTH <mechanism>", "DATA": "DATA", "EHLO": "EHLO hostname", "HELO": "HELO hostname",
    "HELP": "HELP [command]", "MAIL": "MAIL FROM: <address>", "NOOP": "NOOP [ignored]", "QUIT": "QUIT",
    "RCPT": "RCPT TO: <address>", "RSET": "RSET", "STARTTLS": "STARTTLS", "VRFY": "VRFY <address>",
}


class Session:
    """What holds for the whole connection (until STARTTLS starts it afresh)."""

    __slots__ = ("peer", "host_name", "extended_smtp", "ssl", "authenticated", "login", "verdicts")

    def __init__(self, peer: Any, ssl_object: Any) -> None:
        self.peer = peer
        self.host_name: str | None = None
        self.extended_smtp = False
        self.ssl = ssl_object  # the ssl.SSLObject once the connection is encrypted, else None
        self.authenticated = False
        self.login: str | None = None
        self.verdicts: dict[str, object] = {}  # the pipeline's checks' findings about this connection

    @property
    def ip(self) -> str:
        """The client's address, for policy and logs."""
        peer = self.peer
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
        return str(peer or "unknown")


class Envelope:
    """One mail transaction: MAIL, RCPTs, the data."""

    __slots__ = ("mail_from", "mail_options", "smtp_utf8", "size", "rcpt_tos", "rcpt_options", "accepted",
                 "content", "dot_lines", "oversize", "long_line", "bare_line_ending", "nul", "verdicts",
                 "added_headers", "meta")

    def __init__(self) -> None:
        self.mail_from: str | None = None  # "<>" for the null reverse-path, so that it is true
        self.mail_options: list[str] = []
        self.smtp_utf8 = False
        self.size = 0  # declared with SIZE=
        self.rcpt_tos: list[str] = []
        self.rcpt_options: list[str] = []
        self.accepted: list[tuple[str, tuple[str, ...]]] = []  # (address as given, where it goes)
        self.content: bytes = b""
        self.dot_lines = False  # some line of the content starts with "." (the next hop needs it dot-stuffed)
        # What the engine measured of the data, for the pipeline's checks to decide on:
        self.oversize = False  # more than the size limit arrived; content is empty (nothing was kept)
        self.long_line = False  # a line over 998 octets (RFC 5321 §4.5.3.1.6)
        self.bare_line_ending = False  # a CR or LF that is not part of a CRLF (RFC 5321 §2.3.8)
        self.nul = False  # a NUL octet (RFC 5322 §3.5, RFC 2045 §2.8)
        self.verdicts: dict[str, object] = {}  # the pipeline's checks' findings about this message
        self.added_headers: list[tuple[str, str]] = []  # headers the checks add to the message
        self.meta: dict[str, object] = {}  # what the checks want stored with the message (QueuedMessage.meta)


Reply = str | Awaitable[str]  # a decision at once, or one that has to wait (a DNS lookup, a milter)


class Pregreet(Protocol):
    """A pregreet test (screening/pregreet.py): how long the greeting waits between its "220-" line and its
    final line, whether the test was called off meanwhile, and what the client's early bytes mean."""

    wait: float

    def skipped(self) -> bool: ...

    def done(self, early: bytes) -> str | None:
        """The refusal that answers every command but QUIT from now on, or None."""
        ...


class Handler(Protocol):
    """The decisions the engine asks for (smtp.server.InboundHandler)."""

    def handle_CONNECT(self, session: Session) -> str | None | Awaitable[str | None]:
        """None to greet the client, or the reply that refuses it (the connection is then closed)."""
        ...

    def handle_PREGREET(self, session: Session) -> Pregreet | None:
        """After handle_CONNECT: the pregreet test this client takes at the greeting, or None."""
        ...

    def handle_HELO(self, session: Session, name: str) -> str | None | Awaitable[str | None]:
        """None to accept the name, or the reply that refuses it."""
        ...

    def auth_offered(self, session: Session) -> bool: ...
    def refuse_auth(self, session: Session) -> str | None: ...
    def handle_MAIL(self, session: Session, envelope: Envelope, address: str, params: MailParams,
                    options: list[str]) -> Reply: ...
    def handle_RCPT(self, session: Session, envelope: Envelope, address: str, options: list[str]) -> Reply: ...
    async def handle_DATA(self, session: Session, envelope: Envelope) -> str: ...
    async def handle_AUTH(self, conn: SMTPServerProtocol, mechanism: str, initial: str | None) -> str | None: ...
    def handle_exception(self, error: BaseException) -> str: ...
    def handle_CLOSE(self, session: Session) -> None:
        """The connection ended (whatever the reason)."""
        ...


class SessionSet(Protocol):
    def add(self, protocol: object) -> None: ...
    def discard(self, protocol: object) -> None: ...


class SMTPServerProtocol(asyncio.Protocol):
    """One SMTP connection (RFC 5321), with PIPELINING, SIZE, 8BITMIME, SMTPUTF8, STARTTLS and AUTH."""

    def __init__(self, handler: Handler, sessions: SessionSet, *, hostname: str, data_size_limit: int,
                 tls_context: ssl.SSLContext | None, require_starttls: bool,
                 timeout: float = SMTPConfig.idle_timeout) -> None:
        self.handler = handler
        self._sessions = sessions
        self.hostname = hostname
        self.data_size_limit = data_size_limit
        self._tls_context = tls_context
        self._require_starttls = require_starttls and tls_context is not None
        self._timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.session: Session = Session(None, None)
        self.envelope = Envelope()
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()  # received, not yet handled
        self._out: list[bytes] = []  # replies not yet written
        self._busy = False  # a command is waiting for something; later lines stay in _buf
        self._paused = False  # reading is paused (transport.pause_reading)
        self._write_paused = False  # the transport's write buffer is over its high-water mark
        self._skipping = False  # inside an over-long line, discarding to its end
        self._bogus = BOGUS_LIMIT
        self._hangup = False  # a 421 was answered: the connection closes once it is written
        self._line_waiter: asyncio.Future[bytes | None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        # DATA: the bytes so far behind a leading CRLF, where the search for CRLF.CRLF resumes, the refusal
        self._in_data = False
        self._data = bytearray()
        self._scan = 0
        self._dotted = False  # a line of the data starts with "." (dot-stuffed)
        self._connect_verdicts: dict[str, object] = {}  # the CONNECT checks' verdicts, kept across STARTTLS
        self._refusal: str | None = None  # the screening refused the client after "220-": every reply but QUIT's
        self._refused = 0  # commands answered with that refusal

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.session = Session(transport.get_extra_info("peername"), transport.get_extra_info("ssl_object"))
        self._sessions.add(self)
        self._last = self._loop.time()
        self._timer = self._loop.call_later(self._timeout, self._check_idle)
        verdict = self.handler.handle_CONNECT(self.session)
        if isinstance(verdict, str):
            self._refuse_connection(verdict)
            return
        pregreet = self.handler.handle_PREGREET(self.session)
        if pregreet is not None:
            # RFC 5321 §4.2.1: a greeting may span lines, and the client speaks only after the last one.
            transport.write(f"220-{self.hostname} Mailfleet ESMTP\r\n".encode())
            self._wait_for(self._pregreet(pregreet, verdict))
        elif verdict is None:
            transport.write(f"220 {self.hostname} Mailfleet ESMTP\r\n".encode())
            self._connect_verdicts = dict(self.session.verdicts)
        else:
            self._wait_for(self._greet_after(verdict))

    def _refuse_connection(self, reply: str) -> None:
        """A refusal before the greeting: the reply instead of a 220, then the connection is closed (as
        Postfix's postscreen does; RFC 5321 §3.1 lets a server answer 554 and serve nothing more)."""
        self.push(reply)
        self.close()

    async def _greet_after(self, verdict: Awaitable[str | None]) -> None:
        reply = await verdict
        if reply is None:
            self.push_plain(f"220 {self.hostname} Mailfleet ESMTP")
            self._connect_verdicts = dict(self.session.verdicts)
        else:
            self._refuse_connection(reply)

    async def _pregreet(self, test: Pregreet, verdict: Awaitable[str | None] | None) -> None:
        """The pregreet test: the CONNECT checks (DNS lookups) finish during the wait, then the final 220 line.

        What the client sent meanwhile stays in the buffer (the engine is busy); a refusal, by the checks or
        by the test, cannot change the 220 code any more (RFC 5321 §4.2.1), so it answers every command but
        QUIT after the greeting (postscreen's "enforce"); a 421 is sent at once and the connection closed.
        """
        deadline = self._loop.time() + test.wait
        reply = await verdict if verdict is not None else None
        if reply is None and not test.skipped():
            await asyncio.sleep(deadline - self._loop.time())
        if self.transport is None:
            return
        if reply is None:
            reply = test.done(bytes(self._buf))
        self.push_plain(f"220 {self.hostname} Mailfleet ESMTP")
        self._connect_verdicts = dict(self.session.verdicts)
        if reply is not None and reply.startswith("421"):
            self.push(reply)
            self.close()
        elif reply is not None:
            self._refusal = reply

    def connection_lost(self, exc: Exception | None) -> None:
        self._sessions.discard(self)
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()
        if self._line_waiter is not None and not self._line_waiter.done():
            self._line_waiter.set_result(None)
        self.handler.handle_CLOSE(self.session)
        # A DATA task still running is left to finish: the message may be stored, nobody hears the 250;
        # the client sends it again, which is a duplicate at worst, never a loss.

    def eof_received(self) -> bool:
        return False  # close our side too

    def _check_idle(self) -> None:
        if self.transport is None:
            return
        idle = self._loop.time() - self._last
        if idle < self._timeout or self._busy:
            self._timer = self._loop.call_later(max(self._timeout - idle, 1.0), self._check_idle)
            return
        log.info("client=%s idle for %.0f s; closing", self.session.ip, idle)
        if self._write_paused:  # the client reads nothing: a close would wait for the buffer forever
            self.transport.abort()
            return
        self.transport.write(b"421 4.4.2 Idle too long; closing connection\r\n")
        self.transport.close()

    def close(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------------ input

    def data_received(self, data: bytes) -> None:
        self._last = self._loop.time()
        self._buf += data
        if self._line_waiter is not None:
            self._feed_waiter()
        elif not self._busy and not self._write_paused:
            self._process()
            self._flush()
        elif len(self._buf) > PENDING_LIMIT:
            self._pause_reading()

    # Flow control (asyncio.Protocol): a client that sends commands and never reads the replies fills the
    # transport's write buffer. Past its high-water mark reading stops, so the commands wait in the kernel's
    # socket buffers and TCP stops the client; the replies of at most one batch (REPLY_BATCH) are held here.

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        # Not at once: the TLS transport may call this from inside a write of ours.
        self._loop.call_soon(self._carry_on)

    def _carry_on(self) -> None:
        if self.transport is None or self._write_paused:
            return
        if not self._busy or len(self._buf) <= PENDING_LIMIT:
            self._resume_reading()
        if not self._busy and self._line_waiter is None:
            self._process()
            self._flush()

    def _pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._paused and not self._write_paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def _process(self) -> None:
        """Handle what is buffered, in order, until it runs out, a command has to wait or the client stops
        reading the replies."""
        buf = self._buf
        out = self._out
        while not self._busy and not self._hangup and self.transport is not None and not self.transport.is_closing():
            if len(out) >= REPLY_BATCH:
                self._flush()  # may pause writing: then the rest waits in _buf for resume_writing
                if self._write_paused:
                    return
            if self._in_data:
                if not self._take_data():
                    return
                continue
            line = self._take_line()
            if line is None:
                if len(buf) > READ_LIMIT:  # no line end in sight: skip to it, then answer
                    self._skipping = True
                    buf.clear()
                return
            if self._skipping:
                self._skipping = False
                self.push(LINE_TOO_LONG)
                continue
            self._command(line)

    def _command(self, line: bytes) -> None:
        if self._refusal is not None and line.rstrip(b"\r\n").upper() != b"QUIT":
            self._refused += 1  # refused after a 220- greeting (see _pregreet)
            if self._refused > REFUSED_COMMAND_LIMIT:
                self.push("421 4.7.0 Too many commands refused; closing connection")
                self.close()
                return
            self.push(self._refusal)
            return
        try:
            command = parse_command(line)
        except CommandError as exc:
            self.push(exc.reply)
            return
        verb = command.verb
        limit = MAIL_LIMIT_EXTENDED if verb == "MAIL" and self.session.extended_smtp else COMMAND_LIMIT
        if command.length > limit:
            self.push(LINE_TOO_LONG)
            return
        if self._require_starttls and self.session.ssl is None and verb not in ALLOWED_BEFORE_STARTTLS:
            self.push("530 Must issue a STARTTLS command first")
            return
        method = _COMMANDS.get(verb)
        if method is None:
            log.info("client=%s unrecognised command %r", self.session.ip, verb[:20])
            self._bogus -= 1
            if self._bogus < 1:
                self.push("502 5.5.1 Too many unrecognized commands, goodbye.")
                self.close()
                return
            self.push(f'500 Error: command "{verb}" not recognized')
            return
        try:
            waiting = method(self, command.arg)
        except Exception as exc:  # noqa: BLE001 - the session boundary: log once, answer, keep serving
            self.push(self.handler.handle_exception(exc))
            return
        if waiting is not None:
            self._wait_for(waiting)

    def _wait_for(self, step: Coroutine[Any, Any, None]) -> None:
        """Run a command's waiting part as a task; later commands stay buffered until it is done."""
        self._busy = True
        self._loop.create_task(step).add_done_callback(self._resume)

    def _resume(self, task: asyncio.Task[None]) -> None:
        self._busy = False
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self.push(self.handler.handle_exception(error))
        if self.transport is None:
            return
        self._resume_reading()
        if not self._write_paused:
            self._process()
        self._flush()

    def _take_line(self) -> bytes | None:
        """The first buffered line with its line end, taken out of the buffer; None until one is complete."""
        end = self._buf.find(b"\n")
        if end < 0:
            return None
        line = bytes(self._buf[: end + 1])
        del self._buf[: end + 1]
        return line

    async def read_line(self) -> bytes | None:
        """The client's next line (a SASL response); None when the connection is gone or the line too long."""
        self._flush()
        waiter = self._line_waiter = self._loop.create_future()
        self._feed_waiter()
        if not waiter.done() and self.transport is None:
            self._line_waiter = None
            return None
        return await waiter

    def _feed_waiter(self) -> None:
        waiter = self._line_waiter
        assert waiter is not None
        line = self._take_line()
        if line is None:
            if len(self._buf) <= SASL_LINE_LIMIT:
                return
            self._buf.clear()
        self._line_waiter = None
        if not waiter.done():
            waiter.set_result(line)

    # ------------------------------------------------------------------ output

    def push(self, status: str) -> None:
        """Queue a final reply: RFC 2034 §3, it gets an enhanced status code when it has none."""
        self._out.append(codes.with_enhanced(status).encode("utf-8", "replace") + b"\r\n")
        if status.startswith("421"):  # RFC 5321 §3.8: a 421 reply ends the session; the server closes
            self._hangup = True

    def push_plain(self, status: str) -> None:
        """Queue a reply that carries no enhanced code (EHLO/HELO answers, 354, 334)."""
        self._out.append(status.encode("utf-8", "replace") + b"\r\n")

    def _flush(self) -> None:
        if self._out and self.transport is not None:
            self.transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
            if self._hangup:
                self.transport.close()
        self._out.clear()

    # ------------------------------------------------------------------ commands

    def _reset(self) -> None:
        self.envelope = Envelope()

    def _need_helo(self, helo: str = "HELO") -> bool:
        if not self.session.host_name:
            self.push(f"503 Error: send {helo} first")
            return True
        return False

    def smtp_HELO(self, arg: str | None) -> Coroutine[Any, Any, None] | None:
        if not arg:
            self.push("501 Syntax: HELO hostname")
            return None
        return self._greeting(arg, False)

    def smtp_EHLO(self, arg: str | None) -> Coroutine[Any, Any, None] | None:
        if not arg:
            self.push("501 Syntax: EHLO hostname")
            return None
        return self._greeting(arg, True)

    def _greeting(self, name: str, extended: bool) -> Coroutine[Any, Any, None] | None:
        """HELO/EHLO: the pipeline's HELO checks first, then the answer."""
        verdict = self.handler.handle_HELO(self.session, name)
        if verdict is None:
            self._hello(name, extended)
        elif isinstance(verdict, str):
            self.push(verdict)
        else:
            return self._greeting_after(verdict, name, extended)
        return None

    async def _greeting_after(self, verdict: Awaitable[str | None], name: str, extended: bool) -> None:
        reply = await verdict
        if reply is None:
            self._hello(name, extended)
        else:
            self.push(reply)

    def _hello(self, name: str, extended: bool) -> None:
        self._reset()
        session = self.session
        session.extended_smtp = extended
        session.host_name = name
        if not extended:
            self.push_plain(f"250 {self.hostname}")
            return
        lines = [f"250-{self.hostname}"]
        if self.data_size_limit:
            lines.append(f"250-SIZE {self.data_size_limit}")
        lines += ["250-8BITMIME", "250-SMTPUTF8"]
        if self._tls_context is not None and session.ssl is None:
            lines.append("250-STARTTLS")
        if self.handler.auth_offered(session):
            lines.append("250-AUTH LOGIN PLAIN")
        lines += ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 HELP"]
        self.push_plain("\r\n".join(lines))

    def smtp_NOOP(self, arg: str | None) -> None:
        self.push("250 OK")

    def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            self.push("501 Syntax: RSET")
            return
        self._reset()
        self.push("250 OK")

    def smtp_QUIT(self, arg: str | None) -> None:
        if arg:
            self.push("501 Syntax: QUIT")
            return
        self.push("221 Bye")
        self.close()

    def smtp_HELP(self, arg: str | None) -> None:
        available = sorted(v for v in HELP_TEXT if v != "STARTTLS" or self._tls_context is not None)
        if arg:
            verb = arg.upper()
            if verb in available:
                extended = " [SP <mail-parameters>]" if verb in ("MAIL", "RCPT") and self.session.extended_smtp \
                    else ""
                self.push(f"250 Syntax: {HELP_TEXT[verb]}{extended}")
                return
            self.push(f"501 Supported commands: {' '.join(available)}")
            return
        self.push(f"250 Supported commands: {' '.join(available)}")

    def smtp_VRFY(self, arg: str | None) -> None:
        if not arg:
            self.push("501 Syntax: VRFY <address>")
            return
        address, _ = parse_path(arg)
        if address is None:
            self.push("502 Could not VRFY " + arg)
            return
        self.push("252 Cannot VRFY user, but will accept message and attempt delivery")

    def smtp_EXPN(self, arg: str | None) -> None:
        self.push("502 EXPN not implemented")

    def _path(self, keyword: str, arg: str | None, syntax: str) -> tuple[str, list[str], dict, str] | None:
        """MAIL/RCPT: (address, upper-cased parameter words, parameters, the syntax reply), or None after
        answering the refusal."""
        if self.session.extended_smtp:
            syntax += " [SP <mail-parameters>]"
        rest = strip_keyword(keyword, arg) if arg is not None else None
        if rest is None:
            self.push(syntax)
            return None
        address, params = parse_path(rest)
        if address is None:
            self.push("553 5.1.3 Error: malformed address")
            return None
        if not address or (params and not self.session.extended_smtp):
            self.push(syntax)
            return None
        options = (params or "").upper().split()
        parsed = parse_params(options)
        if parsed is None:
            self.push(syntax)
            return None
        return address, options, parsed, syntax

    def smtp_MAIL(self, arg: str | None) -> Coroutine[Any, Any, None] | None:
        if self._need_helo():
            return None
        path = self._path("FROM:", arg, "501 Syntax: MAIL FROM: <address>")
        if path is None:
            return None
        if self.envelope.mail_from:
            self.push("503 Error: nested MAIL command")
            return None
        address, options, params, syntax = path
        checked = check_mail_params(params, 0, syntax)  # the size limit is the pipeline's (pipeline.limits)
        if isinstance(checked, str):
            self.push(checked)
            return None
        self.envelope.smtp_utf8 = checked.smtputf8
        return self._answer(self.handler.handle_MAIL(self.session, self.envelope, address, checked, options))

    def _answer(self, reply: Reply) -> Coroutine[Any, Any, None] | None:
        if isinstance(reply, str):
            self.push(reply)
            return None
        return self._answer_after(reply)

    async def _answer_after(self, reply: Awaitable[str]) -> None:
        self.push(await reply)

    def smtp_RCPT(self, arg: str | None) -> Coroutine[Any, Any, None] | None:
        if self._need_helo():
            return None
        if not self.envelope.mail_from:
            self.push("503 Error: need MAIL command")
            return None
        path = self._path("TO:", arg, "501 Syntax: RCPT TO: <address>")
        if path is None:
            return None
        address, options, params, _ = path
        if params:  # we announce no RCPT parameters (no DSN, RFC 3461)
            self.push("555 RCPT TO parameters not recognized or not implemented")
            return None
        return self._answer(self.handler.handle_RCPT(self.session, self.envelope, address, options))

    def smtp_DATA(self, arg: str | None) -> None:
        if self._need_helo():
            return
        if not self.envelope.rcpt_tos:
            self.push("503 Error: need RCPT command")
            return
        if arg:
            self.push("501 Syntax: DATA")
            return
        self.push_plain("354 End data with <CR><LF>.<CR><LF>")
        self._in_data = True
        self._data = bytearray(b"\r\n")  # the CRLF of the DATA line: the data may end at once with ".\r\n"
        self._scan = 0
        self._dotted = False

    def _take_data(self) -> bool:
        """Move buffered bytes into the message; at the end marker hand it over. False: need more bytes.

        RFC 5321 §4.1.1.4: the data ends only at <CRLF>.<CRLF>, whose first CRLF ends the last line; a lone
        LF or CR never ends it (the data is refused below when it holds one: SMTP smuggling).
        """
        data = self._data
        if self._buf:
            data += self._buf
            self._buf.clear()
        end = self._find_end(data)
        limit = self.data_size_limit
        envelope = self.envelope
        if end < 0:
            if limit and not envelope.oversize and len(data) - 6 > limit:
                # RFC 5321 §4.2.5: read on to the end marker keeping nothing; the pipeline answers at the end
                envelope.oversize = True
                envelope.long_line = _longest_line(data) > MAX_DATA_LINE
            if envelope.oversize and len(data) > 4:
                del data[:-4]
                self._scan = 0
            return False
        self._in_data = False
        self._buf += data[end + 5:]
        if not envelope.oversize:
            body = bytes(memoryview(data)[2: end + 2])  # every line with its CRLF, still dot-stuffed
            if limit and len(body) > limit:
                envelope.oversize = True
                envelope.long_line = _longest_line(body) > MAX_DATA_LINE
            else:
                envelope.bare_line_ending, envelope.long_line, envelope.nul = scan_lines(body)
                # RFC 5321 §4.5.2: a line that starts with a dot loses it (transparency).
                envelope.dot_lines = self._dotted
                envelope.content = (b"\r\n" + body).replace(b"\r\n.", b"\r\n")[2:] if self._dotted else body
        self._data = bytearray()
        self._wait_for(self._deliver())
        return True

    def _find_end(self, data: bytearray) -> int:
        """Where <CRLF>.<CRLF> starts, or -1. One search for <CRLF>. finds both the end and the dot-stuffed
        lines (which then need unstuffing); the search resumes where the last one stopped."""
        pos = self._scan
        while True:
            hit = data.find(b"\r\n.", pos)
            if hit < 0:
                self._scan = max(len(data) - 2, pos)  # a CRLF at the very end may be followed by "."
                return -1
            if hit + 5 > len(data):
                self._scan = hit  # the two bytes after the dot have not arrived yet
                return -1
            if data[hit + 3: hit + 5] == b"\r\n":
                return hit
            self._dotted = True
            pos = hit + 3

    async def _deliver(self) -> None:
        try:
            status = await self.handler.handle_DATA(self.session, self.envelope)
        finally:
            self._reset()
        self.push(status)

    def smtp_STARTTLS(self, arg: str | None) -> Coroutine[Any, Any, None] | None:
        if arg:
            self.push("501 Syntax: STARTTLS")
            return None
        if self.session.ssl is not None:
            self.push("503 5.5.1 TLS already active")
            return None
        if self._tls_context is None:
            self.push("454 TLS not available")
            return None
        return self._starttls(self._tls_context)

    async def _starttls(self, context: ssl.SSLContext) -> None:
        self.push("220 Ready to start TLS")
        self._flush()
        # RFC 3207 §4.2 and CVE-2011-0411: nothing the client sent before the handshake counts afterwards.
        self._buf.clear()
        transport = self.transport
        assert transport is not None
        try:
            tls = await self._loop.start_tls(transport, self, context, server_side=True, ssl_handshake_timeout=60)
        except (OSError, ssl.SSLError) as exc:  # a failed handshake (or a timeout, an OSError) ends the session
            log.info("client=%s TLS handshake failed: %s", self.session.ip, exc)
            transport.close()
            self.connection_lost(exc)  # the TLS layer may not tell us: free the session slot here
            return
        if tls is None:  # pragma: no cover - the connection went away during the handshake
            return
        self.transport = tls
        # RFC 3207 §4.2: the session starts afresh; what the checks held for the plaintext one ends with it.
        self.handler.handle_CLOSE(self.session)
        self.session = Session(self.session.peer, tls.get_extra_info("ssl_object"))
        # What the CONNECT checks found by themselves (a DNSWL listing) was not obtained from the client: it stays.
        self.session.verdicts.update(self._connect_verdicts)
        self._reset()

    def smtp_AUTH(self, arg: str | None) -> Coroutine[Any, Any, None] | None:
        refusal = self.handler.refuse_auth(self.session)
        if refusal is not None:
            self.push(refusal)
            return None
        if self._need_helo("EHLO"):
            return None
        if not self.session.extended_smtp:
            self.push("500 Error: command 'AUTH' not recognized")
            return None
        if self.session.authenticated:
            self.push("503 Already authenticated")
            return None
        if not arg:
            self.push("501 Not enough value")
            return None
        args = arg.split()
        if len(args) > 2:
            self.push("501 Too many values")
            return None
        mechanism = args[0].upper()  # RFC 4422 §3.1: mechanism names are case-insensitive
        if mechanism not in ("PLAIN", "LOGIN"):
            self.push("504 5.5.4 Unrecognized authentication type")
            return None
        return self._auth(mechanism, args[1] if len(args) > 1 else None)

    async def _auth(self, mechanism: str, initial: str | None) -> None:
        login = await self.handler.handle_AUTH(self, mechanism, initial)
        if login is not None:
            self.session.authenticated = True
            self.session.login = login
            self.push("235 2.7.0 Authentication successful")


_Command = Callable[[SMTPServerProtocol, "str | None"], "Coroutine[Any, Any, None] | None"]
_COMMANDS: dict[str, _Command] = {
    name[5:]: getattr(SMTPServerProtocol, name) for name in dir(SMTPServerProtocol) if name.startswith("smtp_")
}


def _longest_line(data: bytes | bytearray) -> int:
    return max(map(len, data.split(b"\r\n")), default=0)


