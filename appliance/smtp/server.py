"""The SMTP listeners: aiosmtpd is the protocol engine; the handler asks the policy and commits to the spool.

One handler class serves both the MX port (25) and the submission ports (587 with STARTTLS required, 465 with
implicit TLS); what differs is whether AUTH is offered and required, and which policy questions apply.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import re
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from appliance.auth.authenticator import is_loopback
from appliance.auth.sasl import SaslError, decode_login_field, decode_plain
from appliance.config import HostPort
from appliance.queue.spool import QueuedMessage, Recipient, new_queue_id
from appliance.smtp import codes, method_tables
from appliance.smtp.address import AddressError, parse_mailbox
from appliance.smtp.policy import Client, RecipientPolicy

log = logging.getLogger("appliance.smtp")

method_tables.install()


# RFC 5321 §2.3.8: only CRLF ends a line. A lone CR or LF is how SMTP smuggling hides a second message from
# one server and shows it to the next, so such data is refused rather than passed on.
def has_bare_cr_or_lf(data: bytes) -> bool:
    """True when some CR is not followed by LF or some LF not preceded by CR.

    Counting is exact (a CRLF holds one CR and one LF and cannot overlap another) and about 8x faster than a
    look-around regex on a 100 KB message, where the regex was the largest single cost of accepting it.
    """
    pairs = data.count(b"\r\n")
    return data.count(b"\r") != pairs or data.count(b"\n") != pairs


Authenticate = Callable[[str, str, str], Awaitable[str | None]]
Commit = Callable[[QueuedMessage, bytes], Awaitable[None]]


@dataclass
class ListenerOptions:
    """What differs between the MX listener and the submission listeners."""

    name: str  # smtp, submission, submissions
    offer_auth: bool = False
    require_auth: bool = False
    implicit_tls: bool = False
    plaintext_auth_on_loopback: bool = False


class SessionTable:
    """Open-session counts of every acceptor process, one 8-byte slot each in a shared memory-mapped file.

    Each process writes only its own slot and sums all of them, so smtp.max_sessions holds for the whole
    service however the kernel shares connections out among the processes.
    """

    def __init__(self, path: Path, slots: int, index: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 8 * slots:
                os.ftruncate(fd, 8 * slots)
            self._map = mmap.mmap(fd, 8 * slots)
        finally:
            os.close(fd)
        self._slots = slots
        self._offset = 8 * index
        self.set(0)

    def set(self, count: int) -> None:
        struct.pack_into("q", self._map, self._offset, count)

    def total(self) -> int:
        return sum(struct.unpack_from(f"{self._slots}q", self._map))


@dataclass
class SessionCounter:
    limit: int
    active: set = field(default_factory=set)
    table: SessionTable | None = None  # set in acceptor processes: the limit is for all of them together

    def full(self) -> bool:
        count = self.table.total() if self.table is not None else len(self.active)
        return count >= self.limit

    def add(self, protocol: object) -> None:
        self.active.add(protocol)
        if self.table is not None:
            self.table.set(len(self.active))

    def discard(self, protocol: object) -> None:
        self.active.discard(protocol)
        if self.table is not None:
            self.table.set(len(self.active))


class InboundHandler:
    """aiosmtpd handler: the policy decides each recipient, the spool makes the 250 true."""

    def __init__(self, hostname: str, policy: RecipientPolicy, commit: Commit, options: ListenerOptions,
                 max_recipients: int, authenticate: Authenticate | None = None,
                 is_banned: Callable[[str], bool] | None = None,
                 sender_allowed: Callable[[str, str], bool] | None = None) -> None:
        self.hostname = hostname
        self.policy = policy
        self._commit = commit
        self.options = options
        self.max_recipients = max_recipients
        self._authenticate = authenticate
        self._is_banned = is_banned or (lambda ip: False)
        self._sender_allowed = sender_allowed

    # -- EHLO: aiosmtpd lists SIZE, 8BITMIME, SMTPUTF8, STARTTLS, AUTH; we add the rest and hide AUTH off 587/465.
    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        out = [r for r in responses if not r.startswith("250-AUTH")]
        if self.options.offer_auth and _auth_allowed(server, session, self.options):
            out.insert(-1, "250-AUTH LOGIN PLAIN")
        out[-1:-1] = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        return out

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if self.options.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if address and address != "<>":  # aiosmtpd hands the null reverse-path over as "<>"
            refusal = _charset_refusal(address, envelope, "5.1.7")
            if refusal:
                return refusal
            try:
                sender = str(parse_mailbox(address, forbid_routing=False))
            except AddressError as exc:
                return exc.reply()
            login = _login(session)
            if login is not None and self._sender_allowed is not None and not self._sender_allowed(login, sender):
                return f"553 5.7.1 <{sender}> is not an address of the authenticated user {login}"
        else:
            sender = "<>"  # kept as aiosmtpd's marker (it needs a true value); the spool stores ""
        envelope.mail_from = sender
        envelope.mail_options.extend(mail_options)
        envelope.mf_size = _size_param(mail_options)  # type: ignore[attr-defined]
        envelope.mf_rcpts = []  # type: ignore[attr-defined]
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        accepted: list = getattr(envelope, "mf_rcpts", [])
        if len(accepted) >= self.max_recipients:
            return codes.TOO_MANY_RECIPIENTS
        refusal = _charset_refusal(address, envelope, "5.1.3")
        if refusal:
            return refusal
        if address.strip().lower() == "postmaster":
            # RFC 5321 §4.5.1: RCPT TO:<Postmaster> without a domain MUST be accepted; it means our postmaster.
            local_domains = self.policy.config.primary.domains if self.policy.config.primary else ()
            if not local_domains:
                return "550 5.1.1 <Postmaster>: this host keeps no mailboxes; write to the postmaster of a domain"
            address = f"postmaster@{local_domains[0]}"
        try:
            mailbox = parse_mailbox(address)
        except AddressError as exc:
            log.info("client=%s rcpt=%r refused: %s", _ip(session), address, exc.text)
            return exc.reply()
        decision = self.policy.check(mailbox, Client(_ip(session), _login(session)),
                                     getattr(envelope, "mf_size", 0))
        if not decision.accepted:
            log.info("client=%s from=<%s> rcpt=<%s> refused: %s", _ip(session), envelope.mail_from, mailbox,
                     decision.reply)
            return decision.reply
        accepted.append((str(mailbox), decision.addresses))
        envelope.mf_rcpts = accepted  # type: ignore[attr-defined]
        envelope.rcpt_tos.append(str(mailbox))
        envelope.rcpt_options.extend(rcpt_options)
        return decision.reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""  # CRLF line endings only: SMTPProtocol._read_data refused others
        ip = _ip(session)
        queue_id = new_queue_id()
        recipients: list[Recipient] = []
        seen: set[str] = set()
        for original, targets in getattr(envelope, "mf_rcpts", []):
            for target in targets:
                if target.lower() not in seen:
                    seen.add(target.lower())
                    recipients.append(Recipient(address=target, original=original))
        data = self._received(session, envelope, queue_id) + raw
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from
        message = QueuedMessage(queue_id=queue_id, mail_from=sender, recipients=recipients,
                                arrival=time.time(), client=ip, helo=session.host_name or "",
                                smtputf8="SMTPUTF8" in (o.upper() for o in envelope.mail_options),
                                meta={"crlf_only": True})  # checked in _read_data: the next hop gets it as it is
        try:
            await self._commit(message, data)
        except OSError as exc:
            log.error("queue_id=%s could not be queued: %s", queue_id, exc)
            return codes.TEMP_QUEUE_FAILURE
        log.info("queue_id=%s client=%s helo=%s from=<%s> rcpts=%d size=%d tls=%s auth=%s listener=%s "
                 "result=250", queue_id, ip, session.host_name, envelope.mail_from, len(recipients), len(data),
                 "yes" if session.ssl else "no", _login(session) or "-", self.options.name)
        return f"250 2.0.0 OK queued as {queue_id}"

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's default answers '500 Error: (ExceptionName) text': permanent, and it leaks internals.

        A fault on our side is temporary for the sender (it retries); the traceback goes to our log once.
        """
        log.error("SMTP session error; answering 451", exc_info=error)
        return codes.TEMP_INTERNAL_ERROR

    def _received(self, session: Session, envelope: Envelope, queue_id: str) -> bytes:
        # RFC 5321 §4.4 trace field; "with" keywords per RFC 3848.
        proto = "ESMTP" if session.extended_smtp else "SMTP"
        if session.ssl:
            proto += "S"
        if session.authenticated:
            proto += "A"
        helo = _printable(session.host_name or "unknown")
        rcpt = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
        header = (f"Received: from {helo} ([{_ip(session)}])\r\n\tby {self.hostname} (Mailfleet) with {proto} "
                  f"id {queue_id}{rcpt};\r\n\t{formatdate(localtime=False)}\r\n")
        return header.encode("utf-8", "replace")

    # -- AUTH (RFC 4954) with our own async mechanisms: argon2 runs in a thread, the loop keeps serving.
    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        blob = args[1] if len(args) > 1 else await _challenge(server, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        try:
            username, password = decode_plain(blob)
        except SaslError as exc:
            return AuthResult(success=False, handled=False, message=f"501 5.5.2 {exc}")
        return await self._verify(server, username, password)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        try:
            answer = args[1] if len(args) > 1 else await _challenge(server, "VXNlcm5hbWU6")
            if answer is None:
                return AuthResult(success=False, handled=True)
            username = decode_login_field(answer, "username")
            answer = await _challenge(server, "UGFzc3dvcmQ6")
            if answer is None:
                return AuthResult(success=False, handled=True)
            password = decode_login_field(answer, "password")
        except SaslError as exc:
            return AuthResult(success=False, handled=False, message=f"501 5.5.2 {exc}")
        return await self._verify(server, username, password)

    async def _verify(self, server: SMTP, username: str, password: str) -> AuthResult:
        session = server.session
        if self._authenticate is None:
            return AuthResult(success=False, handled=False, message=codes.AUTH_UNAVAILABLE)
        if not _auth_allowed(server, session, self.options):
            return AuthResult(success=False, handled=False,
                              message="538 5.7.11 Encryption required for requested authentication mechanism")
        login = await self._authenticate(username, password, _ip(session))
        if login is None:
            log.info("client=%s AUTH failed for user %r", _ip(session), _printable(username))
            return AuthResult(success=False, handled=False, message="535 5.7.8 Authentication credentials invalid")
        log.info("client=%s authenticated as %s", _ip(session), login)
        return AuthResult(success=True, handled=False, auth_data=LoginPassword(login.encode(), b""))


# The path almost every client sends: <dot-atom@domain> and then the parameters, if any.
_PLAIN_PATH = re.compile(r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                         r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*")


class SMTPProtocol(SMTP):
    """aiosmtpd's engine with enhanced status codes on every final reply and a session count."""

    def __init__(self, handler: InboundHandler, counter: SessionCounter, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._counter = counter
        self._plain = False
        self._greeted = False
        self.__ident__ = "Mailfleet ESMTP"

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parsing goes through the email package's header parser and defines a class per
        call: a twentieth of an acceptor's time. The plain form is matched here, with the same answer (a
        hypothesis test compares the two); anything else (quotes, comments, literals, routes) goes to it."""
        match = _PLAIN_PATH.match(arg)
        if match is None or arg.startswith("(", match.end()):
            try:
                return super()._getaddr(arg)
            except (IndexError, ValueError):  # the email parser trips over some fragments, e.g. a lone "<"
                return None, None  # aiosmtpd then answers 501 with the command's syntax
        address = match.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, arg[match.end():]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._counter.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._counter.discard(self)
        super().connection_lost(error)

    async def push(self, status: str) -> None:
        # RFC 2034 §3: every reply but the greeting (and the HELO/EHLO answers, and the 3xx continuations)
        # carries an enhanced code; STARTTLS's "220 Ready" is not the greeting and gets 2.0.0.
        greeting = not self._greeted and status.startswith("220")
        self._greeted = True
        if not self._plain and not greeting and not status.startswith(("354", "334")):
            status = codes.with_enhanced(status)
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._plain = True  # RFC 2034 §3: no enhanced codes on the EHLO answer
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._plain = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain = False

    async def smtp_AUTH(self, arg: str) -> None:
        handler: InboundHandler = self.event_handler
        if not handler.options.offer_auth:
            await self.push(codes.AUTH_UNAVAILABLE)
            return
        if self.session is not None and handler._is_banned(_ip(self.session)):
            await self.push("454 4.7.0 Too many failed logins from your address; try again later")
            return
        await super().smtp_AUTH(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.session is not None and self.session.ssl is not None:
            await self.push("503 5.5.1 TLS already active")
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the message read in blocks rather than one await per line.

        Per-line reading cost a 100 KB message some 1,300 awaits and as many pause/resume cycles of the
        socket. The answers are aiosmtpd's: 500 for a line over 1001 bytes, 552 over the size limit, 250 from
        the handler; the end of data is only <CRLF>.<CRLF> (RFC 5321 §4.1.1.4), whose CRLF ends the last line.
        """
        if self._decode_data or "DATA" not in self._handle_hooks:
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        received = await self._read_data()
        if received is None:
            return
        body, refusal = received
        if refusal is not None:
            await self.push(refusal)
            self._set_post_data_state()
            return
        # RFC 5321 §4.5.2: a line that starts with a dot loses it (transparency).
        content = (b"\r\n" + body).replace(b"\r\n.", b"\r\n")[2:]
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _read_data(self) -> tuple[bytes, str | None] | None:
        """The data up to the end marker, dot-stuffed, and the refusal if any; None if the client left."""
        reader = self._reader
        limit = self.data_size_limit
        parts: list[bytes] = []
        tail = b"\r\n"  # the CRLF of the DATA command: the data may end at once with ".\r\n"
        size = 0
        refusal: str | None = None
        while True:
            try:
                try:
                    chunk = await reader.readuntil(b".\r\n")
                except asyncio.LimitOverrunError as exc:
                    # No ".\r\n" ends within these bytes: take them as they are and keep looking.
                    chunk = await reader.readexactly(exc.consumed)
            except asyncio.IncompleteReadError:
                self._writer.close()
                return None
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self._writer.close()
                raise
            ended = (tail + chunk[-5:])[-5:] == b"\r\n.\r\n"
            if ended:
                chunk = chunk[:-3]  # the dot line; its CRLF before it ends the message's last line
            else:
                tail = (tail + chunk[-4:])[-4:]
            size += len(chunk)
            if refusal is None and limit and size > limit:
                # Read on to the end marker keeping nothing; answer only then (RFC 5321 §4.2.5), as aiosmtpd.
                parts.append(chunk)
                refusal = _LINE_TOO_LONG if _longest_line(b"".join(parts)) > _MAX_LINE else _TOO_MUCH_DATA
                parts.clear()
            elif refusal is None:
                parts.append(chunk)
            if ended:
                break
        body = b"".join(parts) if refusal is None else b""
        if refusal is None:
            bare, too_long = _scan_lines(body)
            if too_long:
                refusal = _LINE_TOO_LONG
            elif bare:
                log.warning("client=%s from=<%s> refused: bare CR/LF in DATA (possible SMTP smuggling)",
                            _ip(self.session), self.envelope.mail_from)
                refusal = codes.BARE_LINE_ENDING
        return body, refusal


# aiosmtpd's limits and answers for DATA (its line_length_limit of 1001 bytes counts the CRLF).
_MAX_LINE = SMTP.line_length_limit - 2
_LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
_TOO_MUCH_DATA = "552 Error: Too much mail data"


def _longest_line(data: bytes) -> int:
    return max(map(len, data.split(b"\r\n")), default=0)


def _scan_lines(data: bytes) -> tuple[bool, bool]:
    """(has a bare CR or LF, has a line over the limit) in one split: the pieces between CRLFs give both the
    number of CRLF pairs and the line lengths, where the two checks apart cost twice the passes."""
    if len(data) <= _MAX_LINE:
        return has_bare_cr_or_lf(data), False
    lines = data.split(b"\r\n")
    pairs = len(lines) - 1
    return data.count(b"\r") != pairs or data.count(b"\n") != pairs, max(map(len, lines)) > _MAX_LINE


class _Refuse(asyncio.Protocol):
    """Answers 421 and hangs up: the session limit is reached."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(codes.TOO_MANY_SESSIONS.encode() + b"\r\n")
        transport.close()


@dataclass
class SMTPListeners:
    servers: list[asyncio.Server]
    counter: SessionCounter

    async def drain(self, grace: float) -> None:
        """Stop accepting, give open sessions `grace` seconds to finish, then close what remains."""
        for server in self.servers:
            server.close()
        deadline = time.monotonic() + grace
        while self.counter.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for proto in list(self.counter.active):
            if proto.transport is not None:
                proto.transport.write(codes.SHUTTING_DOWN.encode() + b"\r\n")
                proto.transport.close()


def bind_listeners(addresses: tuple[HostPort, ...], listen: bool = True) -> list[socket.socket]:
    """Sockets bound before the acceptor processes start, so that they all accept on the same ones.

    With `listen=False` the caller calls listen() itself once the rest of the service is up.
    """
    sockets = []
    for hp in addresses:
        family = socket.AF_INET6 if ":" in hp.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((hp.host, hp.port))
            if listen:
                sock.listen(1024)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen on {hp}: {exc.strerror}") from None
        sockets.append(sock)
    return sockets


async def start_smtp(listen: tuple[HostPort, ...], handler_factory: Callable[[ListenerOptions], InboundHandler],
                     options: ListenerOptions, counter: SessionCounter, hostname: str, max_message_size: int,
                     tls_context: ssl.SSLContext | None,
                     sockets: list[socket.socket] | None = None) -> list[asyncio.Server]:
    """One asyncio server per listen address (or per inherited socket), all sharing `counter`."""
    loop = asyncio.get_running_loop()
    handler = handler_factory(options)

    def factory() -> asyncio.Protocol:
        if counter.full():
            return _Refuse()
        return SMTPProtocol(
            handler, counter, hostname=hostname, data_size_limit=max_message_size, enable_SMTPUTF8=True,
            decode_data=False, tls_context=None if options.implicit_tls else tls_context,
            require_starttls=options.offer_auth and not options.implicit_tls and not
            options.plaintext_auth_on_loopback,
            auth_required=False, auth_require_tls=False, timeout=300, loop=loop)

    servers = []
    ssl_arg = tls_context if options.implicit_tls else None
    if sockets is not None:
        for sock in sockets:
            # backlog: asyncio calls listen() again on the socket; its default of 100 would shrink the queue.
            servers.append(await loop.create_server(factory, sock=sock, ssl=ssl_arg, backlog=1024))
        return servers
    for hp in listen:
        servers.append(await loop.create_server(factory, host=hp.host, port=hp.port, reuse_address=True,
                                                backlog=1024, ssl=ssl_arg))
        log.info("listening for %s on %s", options.name, hp)
    return servers


async def _challenge(server: SMTP, prompt: str) -> str | None:
    """One SASL round (RFC 4954 §4): '334 prompt', the client's base64 line; '*' cancels."""
    await server.push(f"334 {prompt}")
    line = await server._reader.readline()
    text = line.rstrip(b"\r\n").decode("ascii", "replace")
    if text == "*":
        await server.push("501 5.7.0 Authentication cancelled")
        return None
    return text


def _charset_refusal(address: str, envelope: Envelope, enhanced: str) -> str | None:
    """RFC 6531: a non-ASCII address needs SMTPUTF8 on MAIL, and must be UTF-8.

    aiosmtpd decodes arguments with surrogateescape, so bytes that are not UTF-8 arrive as lone surrogates;
    let through, they would reach the spool, the logs and the next hop as something no one can encode.
    """
    if address.isascii():
        return None
    if not envelope.smtp_utf8:
        return codes.UNDECLARED_SMTPUTF8
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return f"553 {enhanced} Address is not valid UTF-8 (RFC 6531)"
    return None


def _auth_allowed(server: SMTP, session: Session, options: ListenerOptions) -> bool:
    """RFC 4954 §4 / RFC 8314: credentials only over TLS, except on loopback when the config allows it."""
    if options.implicit_tls or session.ssl is not None or getattr(server, "_tls_protocol", None) is not None:
        return True
    return options.plaintext_auth_on_loopback and is_loopback(_ip(session))


def _ip(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "unknown")


def _login(session: Session) -> str | None:
    if not session.authenticated:
        return None
    data = session.auth_data
    login = getattr(data, "login", None)
    return login.decode() if isinstance(login, bytes) else login


def _size_param(options: list[str]) -> int:
    for option in options:
        key, _, value = option.partition("=")
        if key.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


def _printable(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:200]
