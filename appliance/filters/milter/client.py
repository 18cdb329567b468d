"""One milter connection for one SMTP connection: the MTA side of the milter protocol, version 6, as Postfix's
milter8.c speaks it (Sendmail's libmilter is the reference milter).

The client negotiates the version, the modifications it accepts and the protocol steps it offers, then reports
the SMTP connection's events (connect, HELO, MAIL, RCPT, and at the end of DATA the message: DATA, header fields,
end of headers, body chunks, end of body) and reads the milter's answer to each. It honours what the milter
negotiated: the steps it does not want (SMFIP_NO*) are not sent, the steps it does not answer (SMFIP_NR_*) are
not waited for, its macro lists replace the default ones stage by stage, SMFIR_SKIP ends the body early.

What a milter answers decides the client's state, as in Postfix: an accept or a refusal at connect or HELO holds
for the rest of the connection, one after MAIL for the rest of that message; a refusal at RCPT is that
recipient's alone. A transaction that ends without the end of the message (RSET, a refused DATA, a new HELO) is
aborted (SMFIC_ABORT) before the next one starts; the SMTP connection's end is SMFIC_QUIT.

Any failure (the milter is down, does not answer within ``timeout``, or breaks the protocol) leaves the client
FAILED for the rest of the connection and raises MilterUnavailable; the caller applies on_error.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from appliance.config.model import HostPort, UnixSocket
from appliance.filters import headers, scanner
from appliance.filters.milter import codec
from appliance.filters.milter.codec import Actions, MacroStage, MilterProtocolError, Protocol

log = logging.getLogger("appliance.filters")

T = TypeVar("T")

# What we let a milter do: every modification of version 6 (Postfix's milter8.c offers the same).
OFFERED_ACTIONS = (Actions.ADDHDRS | Actions.CHGBODY | Actions.ADDRCPT | Actions.DELRCPT | Actions.CHGHDRS
                   | Actions.QUARANTINE | Actions.CHGFROM | Actions.ADDRCPT_PAR | Actions.SETSYMLIST)
# The steps a milter may leave out or not answer, SMFIR_SKIP, and header values with their leading space.
# Not SMFIP_RCPT_REJ: the pipeline asks a milter only about recipients the earlier checks accepted.
OFFERED_PROTOCOL = (Protocol.NOCONNECT | Protocol.NOHELO | Protocol.NOMAIL | Protocol.NORCPT | Protocol.NOBODY
                    | Protocol.NOHDRS | Protocol.NOEOH | Protocol.NOUNKNOWN | Protocol.NODATA | Protocol.SKIP
                    | Protocol.NR_CONN | Protocol.NR_HELO | Protocol.NR_MAIL | Protocol.NR_RCPT | Protocol.NR_DATA
                    | Protocol.NR_UNKN | Protocol.NR_HDR | Protocol.NR_EOH | Protocol.NR_BODY
                    | Protocol.HDR_LEADSPC)
# Older milters must not get the events their version lacks (milter8.c: MILTER8_V*_PROTO_MASK): DATA came
# with version 4, UNKNOWN with 3.
_MISSING_BEFORE = ((4, Protocol.NODATA), (3, Protocol.NOUNKNOWN))

# The macros sent at each stage unless the milter names its own list: Postfix's defaults (milter_*_macros in
# postconf(5)). A macro without a value here (no TLS, no login, no queue id yet) is left out, as Postfix does.
DEFAULT_MACROS: dict[MacroStage, tuple[str, ...]] = {
    MacroStage.CONNECT: ("j", "{daemon_name}", "{daemon_addr}", "v", "_"),
    MacroStage.HELO: ("{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"),
    MacroStage.ENVFROM: ("i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}", "{mail_host}",
                         "{mail_mailer}"),
    MacroStage.ENVRCPT: ("i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"),
    MacroStage.DATA: ("i",),
    MacroStage.EOH: ("i",),
    MacroStage.EOM: ("i",),
}

# Replies of our own for the milter's bare decisions: Postfix's wording (milter8.c, milter8_event).
REJECTED = "550 5.7.1 Command rejected"
TEMPFAILED = "451 4.7.1 Service unavailable - try again later"
SHUT_DOWN = "421 4.7.0 Service unavailable - closing connection"

Macros = Callable[[str], "str | None"]  # a macro's value by its name without braces ("j", "mail_addr"), or None


class MilterUnavailable(Exception):
    """The milter could not be asked (down, timed out, broke the protocol); str() is one line naming it."""


class State(enum.Enum):
    NEW = "new"  # not connected yet
    READY = "ready"  # negotiated: events flow
    ACCEPTED = "accepted"  # the milter accepted the connection at connect/HELO: nothing more is asked
    REFUSED = "refused"  # the milter refused the connection at connect/HELO: every command gets its reply
    FAILED = "failed"  # down, timed out or broke the protocol (``failure`` says how)
    CLOSED = "closed"  # QUIT sent: the SMTP connection ended


class Message(enum.Enum):
    """Where the current mail transaction stands for the milter."""

    NONE = "none"  # no transaction: no MAIL reported, or the last one ended
    OPEN = "open"  # MAIL reported; not yet the end of the message
    ACCEPTED = "accepted"  # the milter accepted the message: it is asked nothing more about it
    DISCARDED = "discarded"  # the milter asked to discard the message (held in quarantine, never dropped)


class Decision(enum.Enum):
    CONTINUE = "continue"
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"


@dataclass(frozen=True, slots=True)
class Answer:
    """The milter's answer to one event; ``reply`` is the SMTP reply of a REJECT or TEMPFAIL."""

    decision: Decision
    reply: str | None = None

    @property
    def refused(self) -> bool:
        return self.decision is Decision.REJECT or self.decision is Decision.TEMPFAIL


CONTINUE = Answer(Decision.CONTINUE)


@dataclass(frozen=True, slots=True)
class MessageAnswer:
    """The milter's answer at the end of the message: the decision, the modifications it asked for (in order,
    as the scanner interface's Change values) and the quarantine reason it gave, if any."""

    answer: Answer
    changes: tuple[scanner.Change, ...] = ()
    quarantine: str | None = None


class MilterClient:
    """The milter protocol state of one SMTP connection (see the module docstring)."""

    def __init__(self, name: str, address: HostPort | UnixSocket, timeout: float) -> None:
        self.name = name
        self.address = address
        self.timeout = timeout
        self.state = State.NEW
        self.failure: str | None = None
        self.refusal: Answer | None = None  # REFUSED: the answer every later command gets
        self.version = 0
        self.actions = Actions(0)
        self.protocol = Protocol(0)  # the steps the milter negotiated, within OFFERED_PROTOCOL
        self.macro_names: dict[MacroStage, tuple[str, ...]] = dict(DEFAULT_MACROS)
        # What has been reported, so a milter first asked at a later stage hears the earlier ones first.
        self.connected = False
        self.helo_name: str | None = None
        self.transaction: object | None = None  # the SMTP transaction whose MAIL the milter heard
        self.message = Message.NONE
        self.quarantine: str | None = None  # a quarantine reason given before the end of the message
        self._connection_quarantine: str | None = None  # one given at connect/HELO holds for every message
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = codec.ReplyDecoder()
        self._replies: list[codec.Reply] = []
        self._skipping: object | None = None  # SMFIR_SKIP: later events of this kind are not sent (_kind)

    def __str__(self) -> str:
        return f"milter {self.name} ({self.address})"

    @property
    def usable(self) -> bool:
        """True while events are still reported to the milter."""
        return self.state is State.NEW or self.state is State.READY

    # -- the events ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and negotiate (SMFIC_OPTNEG); the milter's reply sets version, actions, steps and macros."""
        if self.state is not State.NEW:
            return
        await self._guarded(self._open())

    async def connect(self, hostname: str, family: str, port: int, address: str, macros: Macros) -> Answer:
        self.connected = True
        return await self._event(codec.Connect(hostname, family, port if family != codec.FAMILY_UNKNOWN else 0,
                                               address if family != codec.FAMILY_UNKNOWN else ""),
                                 MacroStage.CONNECT, macros, Protocol.NOCONNECT, Protocol.NR_CONN, connection=True)

    async def helo(self, name: str, macros: Macros) -> Answer:
        """HELO/EHLO; a transaction still open is aborted first (a new HELO resets it, RFC 5321 §4.1.4)."""
        await self.end_transaction()
        self.helo_name = name
        return await self._event(codec.Helo(_c_text(name)), MacroStage.HELO, macros, Protocol.NOHELO,
                                 Protocol.NR_HELO, connection=True)

    async def mail(self, transaction: object, args: tuple[str, ...], macros: Macros) -> Answer:
        """MAIL FROM for ``transaction`` (any object that stands for it); one still open is aborted first."""
        await self.end_transaction()
        if not self.usable:
            return self._standing()
        self.transaction = transaction
        self.message = Message.OPEN
        self.quarantine = self._connection_quarantine
        answer = await self._event(codec.Mail(tuple(_c_text(arg) for arg in args)), MacroStage.ENVFROM, macros,
                                   Protocol.NOMAIL, Protocol.NR_MAIL)
        if answer.refused:  # the transaction did not start (libmilter is back before MAIL)
            self.message = Message.NONE
        return answer

    async def rcpt(self, args: tuple[str, ...], macros: Macros) -> Answer:
        """RCPT TO; a refusal is this recipient's alone (libmilter stays in the transaction)."""
        if self.message is not Message.OPEN:
            return self._standing()
        return await self._event(codec.Rcpt(tuple(_c_text(arg) for arg in args)), MacroStage.ENVRCPT, macros,
                                 Protocol.NORCPT, Protocol.NR_RCPT)

    async def content(self, data: bytes, macros: Macros) -> MessageAnswer:
        """The end of DATA: SMFIC_DATA, the header fields of ``data`` (CRLF line endings), end of headers, the body
        in chunks and the end of body, then the milter's modifications and its final decision."""
        if self.message is not Message.OPEN:
            answer = self._standing()
            if self.message is Message.DISCARDED:
                answer = Answer(Decision.DISCARD)
            result = MessageAnswer(answer, quarantine=self.quarantine)
            self._transaction_done()
            return result
        try:
            return await self._guarded(self._content(data, macros))
        finally:
            self._transaction_done()

    async def end_transaction(self) -> None:
        """The transaction ended without the end of the message (RSET, a refused DATA, a new MAIL or HELO):
        SMFIC_ABORT, which has no reply."""
        if self.message is Message.NONE:
            return
        self._transaction_done()
        if self.state is State.READY:
            await self._guarded(self._send(codec.encode(codec.Step.ABORT)))

    def quit(self) -> None:
        """The SMTP connection ended: SMFIC_ABORT for a transaction still open, SMFIC_QUIT, and close."""
        writer, self._writer = self._writer, None
        if self.state is State.READY and writer is not None:
            aborting = self.message is not Message.NONE
            writer.write((codec.encode(codec.Step.ABORT) if aborting else b"") + codec.encode(codec.Step.QUIT))
        if self.usable:
            self.state = State.CLOSED
        if writer is not None:
            writer.close()

    # -- the exchange --------------------------------------------------------------------------------------

    async def _open(self) -> None:
        if isinstance(self.address, UnixSocket):
            opening = asyncio.open_unix_connection(str(self.address.path))
        else:
            opening = asyncio.open_connection(self.address.host, self.address.port)
        async with asyncio.timeout(self.timeout):
            self._reader, self._writer = await opening
        if self.state is not State.NEW:  # the SMTP connection ended while we connected
            self._writer.close()
            return
        self.state = State.READY
        await self._send(codec.encode(codec.OptNeg(codec.VERSION, OFFERED_ACTIONS, OFFERED_PROTOCOL)))
        reply = await self._next_reply()
        if not isinstance(reply, codec.OptNeg):
            raise MilterProtocolError(f"answered the negotiation with {_name(reply)}")
        if not 2 <= reply.version <= codec.VERSION:
            raise MilterProtocolError(f"speaks protocol version {reply.version}; we speak 2 to {codec.VERSION}")
        beyond = reply.actions & ~int(OFFERED_ACTIONS)
        if beyond:
            raise MilterProtocolError(f"wants actions {beyond:#x} beyond those we offer ({int(OFFERED_ACTIONS):#x})")
        self.version = reply.version
        self.actions = Actions(reply.actions)
        protocol = Protocol(reply.protocol) & OFFERED_PROTOCOL
        for version, step in _MISSING_BEFORE:
            if self.version < version:
                protocol |= step
        self.protocol = protocol
        stages = {stage.value for stage in MacroStage}
        for stage, names in reply.macros:  # a list for a stage we do not know is left aside, as Postfix does
            if stage in stages and names.split():
                self.macro_names[MacroStage(stage)] = tuple(names.split())
        log.debug("%s: version %d, actions %r, protocol %r", self, self.version, self.actions, self.protocol)

    async def _event(self, command: codec.Command, stage: MacroStage | None, macros: Macros, leave_out: Protocol,
                     no_reply: Protocol, connection: bool = False) -> Answer:
        if self.state is State.NEW:
            await self.open()
        if self.state is not State.READY:
            return self._standing()
        return await self._guarded(self._ask(command, stage, macros, leave_out, no_reply, connection))

    async def _ask(self, command: codec.Command, stage: MacroStage | None, macros: Macros, leave_out: Protocol,
                   no_reply: Protocol, connection: bool) -> Answer:
        if self._skipping is not None:
            if _kind(command) is self._skipping:
                return CONTINUE
            self._skipping = None
        # The macros go out even for a step the milter left out, as Postfix sends them: a later step's
        # smfi_getsymval still finds them.
        packets = self._macros(stage, macros) if stage is not None else b""
        if self.protocol & leave_out:
            if packets:
                await self._send(packets)
            return CONTINUE
        await self._send(packets + codec.encode(command))
        if self.protocol & no_reply:
            return CONTINUE
        return self._decide(await self._final(command, connection=connection), command, connection)

    async def _content(self, data: bytes, macros: Macros) -> MessageAnswer:
        fields, body = header_fields(data)
        steps: list[tuple[codec.Command, MacroStage | None, Protocol, Protocol]] = [
            (codec.Step.DATA, MacroStage.DATA, Protocol.NODATA, Protocol.NR_DATA)]
        steps += [(codec.Header(name, self._header_value(value)), None, Protocol.NOHDRS, Protocol.NR_HDR)
                  for name, value in fields]
        steps.append((codec.Step.END_OF_HEADERS, MacroStage.EOH, Protocol.NOEOH, Protocol.NR_EOH))
        for command, stage, leave_out, no_reply in _chain(steps, body):
            answer = await self._ask(command, stage, macros, leave_out, no_reply, connection=False)
            if answer.decision is not Decision.CONTINUE:
                return self._message_end(answer)
            if isinstance(command, codec.Body) and self._skipping is codec.Body:
                break  # SMFIR_SKIP: the rest of the body is not wanted
        self._skipping = None
        await self._send(self._macros(MacroStage.EOM, macros) + codec.encode(codec.Step.END_OF_BODY))
        modifications: list[codec.Modification] = []
        final = await self._final(codec.Step.END_OF_BODY, connection=False, modifications=modifications)
        answer = self._decide(final, codec.Step.END_OF_BODY, connection=False)
        if answer.refused:
            return MessageAnswer(answer, quarantine=self.quarantine)
        return MessageAnswer(answer, changes(modifications, bool(self.protocol & Protocol.HDR_LEADSPC)),
                             self.quarantine)

    def _message_end(self, answer: Answer) -> MessageAnswer:
        """A decision before the end of body ends the message for the milter."""
        if answer.decision is Decision.DISCARD:
            return MessageAnswer(answer, quarantine=self.quarantine)
        return MessageAnswer(answer, quarantine=None if answer.refused else self.quarantine)

    def _header_value(self, value: str) -> str:
        """A field's value as Sendmail and Postfix send it: continuation lines joined by LF, their leading
        white space kept, and the one space after the colon left out unless the milter negotiated
        SMFIP_HDR_LEADSPC (milter8.c, milter8_header)."""
        value = value.replace("\r\n", "\n")
        if not self.protocol & Protocol.HDR_LEADSPC and value.startswith(" "):
            value = value[1:]
        return _c_text(value)

    async def _final(self, command: codec.Command, connection: bool,
                     modifications: list[codec.Modification] | None = None) -> codec.Reply:
        """Read replies to ``command`` up to its final one; progress waits on, a quarantine is noted, and at the
        end of body the modifications are collected."""
        while True:
            reply = await self._next_reply()
            match reply:
                case codec.Status.PROGRESS:
                    continue
                case codec.Quarantine(reason=reason):
                    if connection:
                        self._connection_quarantine = reason
                    self.quarantine = reason
                    continue
                case (codec.AddHeader() | codec.InsertHeader() | codec.ChangeHeader() | codec.ReplaceBody()
                      | codec.ChangeFrom() | codec.AddRecipient() | codec.DeleteRecipient()):
                    if modifications is None:
                        raise MilterProtocolError(f"sent {_name(reply)} in reply to {_name(command)}; "
                                                  f"modifications belong at the end of the message")
                    modifications.append(reply)
                    continue
                case codec.OptNeg() | codec.SetSymList():
                    raise MilterProtocolError(f"sent {_name(reply)} in reply to {_name(command)}")
            return reply

    def _decide(self, reply: codec.Reply, command: codec.Command, connection: bool) -> Answer:
        """The state change and the answer of a final reply (milter8.c, milter8_event)."""
        match reply:
            case codec.Status.CONTINUE:
                return CONTINUE
            case codec.Status.SKIP:
                self._skipping = _kind(command)
                return CONTINUE
            case codec.Status.ACCEPT:
                if connection:
                    self._finish(State.ACCEPTED)
                elif self.message is Message.OPEN:
                    self.message = Message.ACCEPTED
                return Answer(Decision.ACCEPT)
            case codec.Status.DISCARD:
                if connection:
                    log.warning("%s: a discard at connect or HELO means nothing; carrying on", self)
                    return CONTINUE
                self.message = Message.DISCARDED
                return Answer(Decision.DISCARD)
            case codec.Status.REJECT:
                return self._refused(Answer(Decision.REJECT, REJECTED), connection)
            case codec.Status.TEMPFAIL:
                return self._refused(Answer(Decision.TEMPFAIL, TEMPFAILED), connection)
            case codec.ReplyCode(text=text):
                decision = Decision.REJECT if text.startswith("5") else Decision.TEMPFAIL
                return self._refused(Answer(decision, text), connection)
            case codec.Status.SHUTDOWN | codec.Status.CONN_FAIL:
                return self._refused(Answer(Decision.TEMPFAIL, SHUT_DOWN), connection=True)
        raise MilterProtocolError(f"sent {_name(reply)} in reply to {_name(command)}")

    def _refused(self, answer: Answer, connection: bool) -> Answer:
        if connection:
            self.refusal = answer
            self._finish(State.REFUSED)
        return answer

    def _standing(self) -> Answer:
        """The answer without asking: the connection's refusal, else carry on (accepted, or nothing to ask)."""
        if self.state is State.REFUSED and self.refusal is not None:
            return self.refusal
        return CONTINUE

    def _finish(self, state: State) -> None:
        """The milter is done with this connection: QUIT and close (libmilter would close it anyway)."""
        self.quit()
        self.state = state

    def _transaction_done(self) -> None:
        self.message = Message.NONE
        self.transaction = None
        self.quarantine = None
        self._skipping = None

    def _macros(self, stage: MacroStage, macros: Macros) -> bytes:
        pairs = []
        for name in self.macro_names.get(stage, ()):
            value = macros(name[1:-1] if name.startswith("{") and name.endswith("}") else name)
            if value is not None:
                pairs.append((_c_text(name), _c_text(value)))
        if not pairs:
            return b""
        return codec.encode(codec.DefineMacros(codec.MACRO_COMMAND[stage], tuple(pairs)))

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        writer = self._writer
        if writer is None:
            raise ConnectionResetError("the connection to the milter is closed")
        if self._replies:
            raise MilterProtocolError(f"sent {_name(self._replies[0])} nobody asked for")
        writer.write(data)
        async with asyncio.timeout(self.timeout):
            await writer.drain()

    async def _next_reply(self) -> codec.Reply:
        """The next reply packet; each gets ``timeout`` seconds (a progress reply starts the wait afresh, as
        smfi_progress intends)."""
        reader = self._reader
        if reader is None:
            raise ConnectionResetError("the connection to the milter is closed")
        async with asyncio.timeout(self.timeout):
            while not self._replies:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionResetError("the milter closed the connection")
                self._replies.extend(self._decoder.feed(data))
        return self._replies.pop(0)

    async def _guarded(self, step: Awaitable[T]) -> T:
        """Run one exchange; any failure leaves the client FAILED and closed, and raises MilterUnavailable."""
        try:
            return await step
        except MilterProtocolError as exc:
            raise self._failed(f"protocol error: {exc}") from None
        except TimeoutError:
            raise self._failed(f"no answer within {self.timeout:g}s") from None
        except (OSError, EOFError) as exc:
            raise self._failed(_os_error(exc)) from None
        except asyncio.CancelledError:
            self._failed("cancelled while waiting for its answer")
            raise

    def _failed(self, reason: str) -> MilterUnavailable:
        closed = self.state is State.CLOSED
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if not closed:
            self.state = State.FAILED
            self.failure = reason
        return MilterUnavailable(f"{self}: {reason}")


def _chain(steps: list[tuple[codec.Command, MacroStage | None, Protocol, Protocol]], body: bytes
           ) -> Iterator[tuple[codec.Command, MacroStage | None, Protocol, Protocol]]:
    yield from steps
    for chunk in codec.body_chunks(body):
        yield chunk, None, Protocol.NOBODY, Protocol.NR_BODY


def _name(value: object) -> str:
    return str(value.name) if isinstance(value, enum.Enum) else type(value).__name__


def _kind(command: codec.Command) -> object:
    """What SMFIR_SKIP skips more of: the command's class, or the command itself for those without data."""
    return command if isinstance(command, codec.Step) else type(command)


def _c_text(text: str) -> str:
    """A string the protocol can carry: C strings end at a NUL, so a NUL in the message is left out."""
    return text.replace("\0", "")


def _os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's own text repeats the address we name already
    return str(exc) or type(exc).__name__


# -- the message as a milter sees it ---------------------------------------------------------------------

def header_fields(data: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """The header fields of a message (CRLF line endings) as (name, value) with the value as it follows the
    colon, its folds kept as CRLF, and the body after the empty line. The header section is split as the filter
    engine splits it (filters/headers.py: a line that is neither a field nor a continuation ends it, as in
    Postfix's MIME state machine). Text is decoded with surrogateescape, so its bytes reach the milter
    unchanged."""
    message = headers.parse(data)
    fields = []
    for raw in message.fields:
        name, _, value = raw.partition(b":")
        value = value[:-2] if value.endswith(b"\r\n") else value
        fields.append((name.rstrip(b" \t").decode("ascii"), value.decode("utf-8", "surrogateescape")))
    return fields, message.body


# -- the milter's modifications as the scanner interface's changes ------------------------------------------

_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def changes(modifications: list[codec.Modification], leading_space: bool) -> tuple[scanner.Change, ...]:
    """The modifications in order, as Change values: a body replacement's chunks joined into one ReplaceBody
    (they must come one after another, as Postfix requires), addresses without angle brackets, header values
    as they follow "name: " with every line break a CRLF fold."""
    result: list[scanner.Change] = []
    body: list[bytes] = []
    body_at: int | None = None  # where the body replacement stands among the changes
    for item in modifications:
        if not isinstance(item, codec.ReplaceBody):
            result.append(_change(item, leading_space))
        elif body_at is None:
            body_at = len(result)
            body.append(item.chunk)
        elif body_at != len(result):
            raise MilterProtocolError("a body replacement interrupted by other modifications")
        else:
            body.append(item.chunk)
    if body_at is not None:
        result.insert(body_at, scanner.ReplaceBody(_crlf(b"".join(body))))
    return tuple(result)


def _change(item: codec.Modification, leading_space: bool) -> scanner.Change:
    match item:
        case codec.AddHeader(name=name, value=value):
            return scanner.AddHeader(_field_name(name), _field_value(value, leading_space))
        case codec.InsertHeader(index=index, name=name, value=value):
            return scanner.InsertHeader(index, _field_name(name), _field_value(value, leading_space))
        case codec.ChangeHeader(index=index, name=name, value=value):
            # libmilter's index 0 is the first field of the name, as 1 is (milter8.c: Sendmail compatibility)
            return scanner.ChangeHeader(_field_name(name), max(index, 1),
                                        _field_value(value, leading_space) if value else "")
        case codec.ChangeFrom(sender=sender, parameters=parameters):
            return scanner.ChangeSender(_address(sender), parameters or "")
        case codec.AddRecipient(address=address, parameters=parameters):
            if not _address(address):
                raise MilterProtocolError("asked to add an empty recipient")
            return scanner.AddRecipient(_address(address), parameters or "")
        case codec.DeleteRecipient(address=address):
            return scanner.DeleteRecipient(_address(address))
    raise MilterProtocolError(f"{_name(item)} is not a modification")


def _field_name(name: str) -> str:
    if not _FIELD_NAME.fullmatch(name):
        raise MilterProtocolError(f"not a header field name: {name[:100]!r}")
    return name


def _field_value(value: str, leading_space: bool) -> str:
    """The value as it follows "name: ". With SMFIP_HDR_LEADSPC the milter gives the text after the colon, so
    its one leading space is ours to drop. A line break not followed by white space would start a header
    field of its own: it gets a space, so that everything a milter sends stays inside its field."""
    if leading_space and value.startswith(" "):
        value = value[1:]
    lines = _LINE_BREAK.split(value)
    return "\r\n".join([lines[0]] + [line if line[:1] in (" ", "\t") else " " + line for line in lines[1:]])


def _address(text: str) -> str:
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text


def _crlf(body: bytes) -> bytes:
    """A replacement body with CRLF line endings: a milter may write lines ending in LF alone (Postfix reads
    LF as the line end too, milter8.c); a CR alone becomes a line end as well, as the message must have none."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", body)
