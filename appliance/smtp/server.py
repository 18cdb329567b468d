"""The SMTP listeners: the handler runs the pipeline's checks and hands the message to the intake; smtp.protocol
is the engine.

One handler class serves both the MX port (25) and the submission ports (587 with STARTTLS required, 465 with
implicit TLS); what differs is whether AUTH is offered and required, and which policy questions apply.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

from appliance.auth.authenticator import is_loopback
from appliance.auth.sasl import SaslError, decode_login_field, decode_plain
from appliance.config import HostPort
from appliance.config.model import SMTPConfig
from appliance.message import codes
from appliance.message.address import AddressError, parse_mailbox
from appliance.message.lines import has_bare_cr_or_lf
from appliance.message.model import META_CRLF_ONLY, META_DOT_FREE, QueuedMessage, Recipient, new_queue_id
from appliance.message.printable import printable
from appliance.pipeline.stages import MailFrom, Outcome, Pipeline, RcptTo, Result, Stage
from appliance.pipeline.verdicts import PREGREET
from appliance.screening.pregreet import PregreetTest
from appliance.smtp.commands import MailParams
from appliance.smtp.protocol import Envelope, Session, SMTPServerProtocol

log = logging.getLogger("appliance.smtp")


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
        fd = self._open(path, slots)
        try:
            self._map = mmap.mmap(fd, 8 * slots)
        finally:
            os.close(fd)
        self._slots = slots
        self._offset = 8 * index
        self.set(0)

    @staticmethod
    def allocate(path: Path, slots: int) -> None:
        """The queue process makes the file before it starts the acceptors: a full disk is then an error at
        start, not a crash of every acceptor."""
        os.close(SessionTable._open(path, slots))

    @staticmethod
    def _open(path: Path, slots: int) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # Blocks allocated now, never on a store into the mapping: on a full disk that store would be a
            # SIGBUS (a sparse file's hole has no block yet); here it is an OSError (ENOSPC).
            os.posix_fallocate(fd, 0, 8 * slots)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def set(self, count: int) -> None:
        struct.pack_into("q", self._map, self._offset, count)

    def total(self) -> int:
        return sum(struct.unpack_from(f"{self._slots}q", self._map))


@dataclass
class SessionCounter:
    limit: int
    active: set = field(default_factory=set)
    table: SessionTable | None = None  # set in acceptor processes: the limit is for all of them together
    # Told of every connection that ended, with its session (once or more): the per-client limits release
    # what the connection held. Not the pipeline's close callbacks: those run at STARTTLS too.
    ended: Callable[[Session], None] | None = None

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
        if self.ended is not None and isinstance(protocol, SMTPServerProtocol):
            self.ended(protocol.session)


class InboundHandler:
    """The decisions of an SMTP listener: the pipeline's checks decide, the intake makes the 250 true.

    What stays here is what belongs to the listener rather than to a policy: AUTH, which this listener
    offers or requires, address syntax and charset (RFC 6531), and the trace header.
    """

    def __init__(self, hostname: str, pipeline: Pipeline, commit: Commit, options: ListenerOptions,
                 postmaster_domain: str | None, authenticate: Authenticate | None = None,
                 is_banned: Callable[[str], bool] | None = None) -> None:
        self.hostname = hostname
        self._pipeline = pipeline
        self._commit = commit
        self.options = options
        self._postmaster_domain = postmaster_domain
        self._authenticate = authenticate
        self._is_banned = is_banned or (lambda ip: False)

    def reconfigure(self, pipeline: Pipeline, postmaster_domain: str | None) -> None:
        """SIGHUP: the checks of the new config decide every command from now on; open sessions stay."""
        self._pipeline = pipeline
        self._postmaster_domain = postmaster_domain

    def auth_offered(self, session: Session) -> bool:
        """AUTH in the EHLO answer: on the submission ports, and only where credentials may be sent."""
        return self.options.offer_auth and _auth_allowed(session, self.options)

    def refuse_auth(self, session: Session) -> str | None:
        if not self.options.offer_auth:
            return codes.AUTH_UNAVAILABLE
        if self._is_banned(session.ip):
            return "454 4.7.0 Too many failed logins from your address; try again later"
        pipeline = self._pipeline
        if not pipeline.has_checks(Stage.AUTH):
            return None
        outcome = pipeline.run(Stage.AUTH, session, None, None)
        if outcome is not None and not isinstance(outcome, Result):
            raise TypeError("a check of the AUTH stage must answer at once")
        return outcome.reply if outcome is not None and outcome.refused else None

    def handle_CONNECT(self, session: Session) -> str | None | Awaitable[str | None]:
        pipeline = self._pipeline
        if not pipeline.has_checks(Stage.CONNECT):
            return None
        return _refusal(pipeline.run(Stage.CONNECT, session, None, self.options.name))

    def handle_PREGREET(self, session: Session) -> PregreetTest | None:
        test = session.verdicts.get(PREGREET)  # left by the CONNECT checks (screening/check.py)
        return test if isinstance(test, PregreetTest) else None

    def handle_HELO(self, session: Session, name: str) -> str | None | Awaitable[str | None]:
        pipeline = self._pipeline
        if not pipeline.has_checks(Stage.HELO):
            return None
        return _refusal(pipeline.run(Stage.HELO, session, None, name))

    def handle_MAIL(self, session: Session, envelope: Envelope, address: str, params: MailParams,
                    options: list[str]) -> str | Awaitable[str]:
        if self.options.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if address != "<>":  # the null reverse-path comes as "<>"
            refusal = _charset_refusal(address, envelope, "5.1.7")
            if refusal:
                return refusal
            try:
                sender = str(parse_mailbox(address, forbid_routing=False))
            except AddressError as exc:
                return exc.reply()
        else:
            sender = "<>"  # a true value marks "MAIL given"; the spool stores ""
        outcome = self._pipeline.run(Stage.MAIL, session, envelope, MailFrom(sender if sender != "<>" else "",
                                                                              params.size))
        if outcome is None or isinstance(outcome, Result):
            return _mail_given(outcome, envelope, sender, params, options)
        return _after(outcome, _mail_given, envelope, sender, params, options)

    def handle_RCPT(self, session: Session, envelope: Envelope, address: str,
                    options: list[str]) -> str | Awaitable[str]:
        refusal = _charset_refusal(address, envelope, "5.1.3")
        if refusal:
            return refusal
        if address.strip().lower() == "postmaster":
            # RFC 5321 §4.5.1: RCPT TO:<Postmaster> without a domain MUST be accepted; it means our postmaster.
            if self._postmaster_domain is None:
                return "550 5.1.1 <Postmaster>: this host keeps no mailboxes; write to the postmaster of a domain"
            address = f"postmaster@{self._postmaster_domain}"
        try:
            mailbox = parse_mailbox(address)
        except AddressError as exc:
            log.info("client=%s rcpt=%r refused: %s", session.ip, address, exc.text)
            return exc.reply()
        rcpt = RcptTo(str(mailbox), mailbox, (str(mailbox),))
        outcome = self._pipeline.run(Stage.RCPT, session, envelope, rcpt)
        if outcome is None or isinstance(outcome, Result):
            return _rcpt_given(outcome, envelope, rcpt, options)
        return _after(outcome, _rcpt_given, envelope, rcpt, options)

    def handle_CLOSE(self, session: Session) -> None:
        self._pipeline.closed(session)

    async def handle_DATA(self, session: Session, envelope: Envelope) -> str:
        received = envelope.content
        outcome = self._pipeline.run(Stage.DATA, session, envelope, received)
        if outcome is not None and not isinstance(outcome, Result):
            outcome = await outcome
        if outcome is not None and outcome.refused:
            assert outcome.reply is not None
            return outcome.reply
        raw = envelope.content  # CRLF line endings only: the checks refused others
        dot_free = not envelope.dot_lines
        if raw is not received:  # a check rewrote the message (a milter): measure what goes on
            if has_bare_cr_or_lf(raw):
                log.error("a check rewrote the message with bare CR or LF line endings; answering 451")
                return codes.TEMP_INTERNAL_ERROR
            dot_free = not (raw.startswith(b".") or b"\r\n." in raw)
        if not envelope.accepted:  # a check removed every recipient (a milter's delrcpt)
            return "554 5.7.1 No recipients left after the content checks"
        ip = session.ip
        queue_id = new_queue_id()
        recipients: list[Recipient] = []
        seen: set[str] = set()
        for original, targets in envelope.accepted:
            for target in targets:
                if target.lower() not in seen:
                    seen.add(target.lower())
                    recipients.append(Recipient(address=target, original=original))
        data = self._received(session, envelope, queue_id)
        if envelope.added_headers:
            data += _header_lines(envelope.added_headers)
        data += raw
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from or ""
        message = QueuedMessage(queue_id=queue_id, mail_from=sender, recipients=recipients,
                                arrival=time.time(), client=ip, helo=session.host_name or "",
                                smtputf8=envelope.smtp_utf8,
                                # checked by the pipeline: the next hop gets it as it is
                                meta={**envelope.meta, META_CRLF_ONLY: True, META_DOT_FREE: True} if dot_free
                                else {**envelope.meta, META_CRLF_ONLY: True})
        try:
            await self._commit(message, data)
        except OSError as exc:
            log.error("queue_id=%s could not be queued: %s", queue_id, exc)
            return codes.queue_failure(exc)
        log.info("queue_id=%s client=%s helo=%s from=<%s> rcpts=%d size=%d tls=%s auth=%s listener=%s "
                 "result=250", queue_id, ip, session.host_name, envelope.mail_from, len(recipients), len(data),
                 "yes" if session.ssl else "no", session.login or "-", self.options.name)
        return f"250 2.0.0 OK queued as {queue_id}"

    def handle_exception(self, error: BaseException) -> str:
        """A fault on our side is temporary for the sender (it retries); the traceback goes to our log once."""
        log.error("SMTP session error; answering 451", exc_info=error)
        return codes.TEMP_INTERNAL_ERROR

    def _received(self, session: Session, envelope: Envelope, queue_id: str) -> bytes:
        # RFC 5321 §4.4 trace field; "with" keywords per RFC 3848.
        proto = "ESMTP" if session.extended_smtp else "SMTP"
        if session.ssl is not None:
            proto += "S"
        if session.authenticated:
            proto += "A"
        helo = printable(session.host_name or "unknown", 200, ascii_only=True)
        rcpt = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
        header = (f"Received: from {helo} ([{session.ip}])\r\n\tby {self.hostname} (Mailfleet) with {proto} "
                  f"id {queue_id}{rcpt};\r\n\t{formatdate(localtime=False)}\r\n")
        return header.encode("utf-8", "replace")

    # -- AUTH (RFC 4954) PLAIN and LOGIN: argon2 runs in a thread, the loop keeps serving.
    async def handle_AUTH(self, conn: SMTPServerProtocol, mechanism: str, initial: str | None) -> str | None:
        """The SASL exchange; the login on success, else None once the refusal is answered."""
        try:
            if mechanism == "PLAIN":
                blob = initial if initial is not None else await _challenge(conn, "")
                if blob is None:
                    return None
                username, password = decode_plain(blob)
            else:
                answer = initial if initial is not None else await _challenge(conn, "VXNlcm5hbWU6")
                if answer is None:
                    return None
                username = decode_login_field(answer, "username")
                answer = await _challenge(conn, "UGFzc3dvcmQ6")
                if answer is None:
                    return None
                password = decode_login_field(answer, "password")
        except SaslError as exc:
            conn.push(f"501 5.5.2 {exc}")
            return None
        session = conn.session
        if self._authenticate is None:
            conn.push(codes.AUTH_UNAVAILABLE)
            return None
        if not _auth_allowed(session, self.options):
            conn.push("538 5.7.11 Encryption required for requested authentication mechanism")
            return None
        login = await self._authenticate(username, password, session.ip)
        if login is None:
            log.info("client=%s AUTH failed for user %s", session.ip, username)
            conn.push("535 5.7.8 Authentication credentials invalid")
            return None
        log.info("client=%s authenticated as %s", session.ip, login)
        return login


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
                     options: ListenerOptions, counter: SessionCounter, hostname: str, settings: SMTPConfig,
                     tls_context: ssl.SSLContext | None,
                     sockets: list[socket.socket] | None = None) -> list[asyncio.Server]:
    """One asyncio server per listen address (or per inherited socket), all sharing `counter`; `settings` is the
    config's smtp section (the size limit the engine announces and enforces, the idle timeout)."""
    loop = asyncio.get_running_loop()
    handler = handler_factory(options)

    def factory() -> asyncio.Protocol:
        if counter.full():
            return _Refuse()
        return SMTPServerProtocol(
            handler, counter, hostname=hostname, data_size_limit=settings.max_message_size,
            tls_context=None if options.implicit_tls else tls_context,
            require_starttls=options.offer_auth and not options.implicit_tls and not
            options.plaintext_auth_on_loopback, timeout=settings.idle_timeout)

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


async def _challenge(conn: SMTPServerProtocol, prompt: str) -> str | None:
    """One SASL round (RFC 4954 §4): '334 prompt', the client's base64 line; '*' cancels."""
    conn.push_plain(f"334 {prompt}")
    line = await conn.read_line()
    if line is None:
        return None
    text = line.rstrip(b"\r\n").decode("ascii", "replace")
    if text == "*":
        conn.push("501 5.7.0 Authentication cancelled")
        return None
    return text


def _refusal(outcome: Outcome | Awaitable[Outcome]) -> str | None | Awaitable[str | None]:
    """A stage's outcome as the engine takes it: the refusal reply, or None to go on."""
    if outcome is None or isinstance(outcome, Result):
        return outcome.reply if outcome is not None and outcome.refused else None

    async def wait() -> str | None:
        result = await outcome
        return result.reply if result is not None and result.refused else None

    return wait()


async def _after(outcome: Awaitable[Outcome], then: Callable[..., str], *args: object) -> str:
    return then(await outcome, *args)


def _mail_given(outcome: Outcome, envelope: Envelope, sender: str, params: MailParams, options: list[str]) -> str:
    if outcome is not None and outcome.refused:
        assert outcome.reply is not None
        return outcome.reply
    envelope.mail_from = sender
    envelope.mail_options.extend(options)
    envelope.size = params.size
    return outcome.reply if outcome is not None and outcome.reply else "250 2.1.0 OK"


def _rcpt_given(outcome: Outcome, envelope: Envelope, rcpt: RcptTo, options: list[str]) -> str:
    if outcome is not None and outcome.refused:
        assert outcome.reply is not None
        return outcome.reply
    envelope.accepted.append((rcpt.address, rcpt.targets))
    envelope.rcpt_tos.append(rcpt.address)
    envelope.rcpt_options.extend(options)
    return outcome.reply if outcome is not None and outcome.reply else "250 2.1.5 OK"


def _header_lines(headers: list[tuple[str, str]]) -> bytes:
    """Header fields the checks asked for (RFC 5322 §2.2): a value's own line breaks become folds, so that no
    check can end the header section or start a field of its own."""
    out = []
    for name, value in headers:
        lines = [line.strip() for line in value.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
        out.append(f"{name}: " + "\r\n\t".join(line for line in lines if line) + "\r\n")
    return "".join(out).encode("utf-8", "replace")


def _charset_refusal(address: str, envelope: Envelope, enhanced: str) -> str | None:
    """RFC 6531: a non-ASCII address needs SMTPUTF8 on MAIL, and must be UTF-8.

    The engine decodes arguments with surrogateescape, so bytes that are not UTF-8 arrive as lone surrogates;
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


def _auth_allowed(session: Session, options: ListenerOptions) -> bool:
    """RFC 4954 §4 / RFC 8314: credentials only over TLS, except on loopback when the config allows it."""
    if options.implicit_tls or session.ssl is not None:
        return True
    return options.plaintext_auth_on_loopback and is_loopback(session.ip)
