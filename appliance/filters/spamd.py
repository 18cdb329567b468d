"""SpamAssassin's spamd as a scanner: one SYMBOLS request per message over the SPAMC/1.5 protocol.

The protocol is spamd/PROTOCOL of the SpamAssassin distribution, checked against what spamd 4.0 itself does
(/usr/sbin/spamd, `check` and `parse_headers`) and what spamc's libspamc.c accepts:

    client: SYMBOLS SPAMC/1.5 CRLF  Content-length: <bytes> CRLF  [User: <name> CRLF]  CRLF  <message>
    spamd:  SPAMD/1.1 0 EX_OK CRLF  Content-length: <bytes> CRLF  Spam: True ; 1000.0 / 5.0 CRLF  CRLF
            GTUBE,NO_RECEIVED,NO_RELAYS

spamd answers one request per connection and closes it, so the client reads to the end of the stream (with a
cap: the answer of SYMBOLS is a few hundred bytes) and then parses the whole answer at once. A non-zero code
(sysexits.h) is spamd's refusal: the status line alone, its reason as the message.

The parser (`parse_response`, `parse_symbols`) is pure, bytes in and a typed answer or a `ParseError` out, and
apart from the I/O (`SpamdScanner`), which only connects, sends, reads and closes.

Why not aiospamc (PyPI, MIT, asyncio, Unix sockets, SYMBOLS): it reads the answer with an unbounded
``reader.read()`` (an endless answer fills memory until the timeout), closes the connection only on success (a
cancelled or failed scan leaves the socket to the garbage collector), logs every failure with a traceback through
loguru rather than the standard logging, and brings typer and certifi along for its command line.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import socket
from dataclasses import dataclass

from appliance.config.model import HostPort, ScannerConfig, UnixSocket
from appliance.filters.scanner import ScanError, ScanRequest, Verdict

PROTOCOL = "SPAMC/1.5"
# The most of an answer the client reads. SYMBOLS answers a status line, two headers and the names of the rules
# that hit, comma-separated (a rule name is at most 128 characters, and a message rarely hits more than a few
# dozen rules): a few KiB. More is a peer that is not spamd.
MAX_RESPONSE = 64 * 1024
_READ_CHUNK = 16 * 1024

# sysexits.h, as spamd's %resphash names them; spamd's answer code is one of these.
EXIT_CODES = {
    0: "EX_OK", 64: "EX_USAGE", 65: "EX_DATAERR", 66: "EX_NOINPUT", 67: "EX_NOUSER", 68: "EX_NOHOST",
    69: "EX_UNAVAILABLE", 70: "EX_SOFTWARE", 71: "EX_OSERR", 72: "EX_OSFILE", 73: "EX_CANTCREAT", 74: "EX_IOERR",
    75: "EX_TEMPFAIL", 76: "EX_PROTOCOL", 77: "EX_NOPERM", 78: "EX_CONFIG", 79: "EX_TIMEOUT",
}

_STATUS = re.compile(r"SPAMD/(\d{1,3}\.\d{1,3})[ \t]+(\d{1,9})(?:[ \t]+(.*?))?[ \t]*")
# A header line: spamd's own parser splits at the first colon and drops the whitespace after it (/:\s*/).
_HEADER = re.compile(r"([!-9;-~]+):[ \t]*(.*?)[ \t]*")
_NUMBER = r"[+-]?\d{1,15}(?:\.\d{1,15})?"
# "True ; 1000.0 / 5.0" (CHECK, SYMBOLS, REPORT) or "Yes ; ..." (REPORT_IFSPAM); libspamc reads it with
# sscanf("Spam: %5s ; %20s / %20s"), where each blank stands for any whitespace.
_SPAM = re.compile(rf"(True|False|Yes|No)[ \t]*;[ \t]*({_NUMBER})[ \t]*/[ \t]*({_NUMBER})", re.IGNORECASE)
_LENGTH = re.compile(r"\d{1,12}")
# Mail::SpamAssassin::Constants RULENAME_RE: what a rule's name may be.
_RULE = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]{0,127}")
# PROTOCOL's "traditional UNIX username" ([-A-Za-z0-9_]+), widened to what spamd's virtual users take (an
# address); never whitespace, a colon or a control character, which would end or forge a request header.
_USER = re.compile(r"[!-9;-~]{1,255}")


class ParseError(Exception):
    """The bytes are not a SPAMD answer; str() says what is wrong, in one line."""


@dataclass(frozen=True, slots=True)
class SpamStatus:
    """The Spam header: spamd's decision, the message's score and the threshold it was held against."""

    spam: bool
    score: float
    required: float


@dataclass(frozen=True, slots=True)
class Response:
    """One SPAMD answer."""

    version: str  # of the answer's protocol ("1.1" for SYMBOLS, "1.0" for refusals, "1.5" for PONG)
    code: int  # sysexits.h: 0 is EX_OK, anything else a refusal whose reason is the message
    message: str  # "EX_OK", "PONG", or spamd's reason ("Bad header line: ...")
    status: SpamStatus | None = None  # the Spam header, when there is one
    body: bytes = b""  # Content-length bytes (the rule names for SYMBOLS)

    @property
    def code_name(self) -> str:
        return EXIT_CODES.get(self.code, f"code {self.code}")


def encode_request(command: str, message: bytes, user: str | None = None) -> bytes:
    """The request's head (the message follows it as it is): the command line and its headers.

    Content-length counts bytes (PROTOCOL, Headers); spamd reads exactly that many and answers EX_PROTOCOL on a
    mismatch. spamd matches the header names case-sensitively, so they are written as spamc writes them.
    """
    lines = [f"{command} {PROTOCOL}", f"Content-length: {len(message)}"]
    if user is not None:
        if not _USER.fullmatch(user):
            raise ValueError(f"{user!r} is not a spamd user name (printable ASCII, no spaces or colons)")
        lines.append(f"User: {user}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def parse_response(data: bytes) -> Response:
    """Parse one whole SPAMD answer (everything spamd sent before it closed the connection).

    Lines end in CRLF; a bare LF is taken too (libspamc reads up to LF). Headers may come in any order, their
    names in any case; headers this client does not know are ignored (PROTOCOL: "As-yet-undefined headers should
    not be treated as errors"). With a Content-length the body must be exactly that long, as libspamc checks;
    without one (protocol 1.2 answers) it is whatever follows the blank line.
    """
    if not data:
        raise ParseError("empty answer")
    line, rest = _line(data, "the status line")
    status = _STATUS.fullmatch(line)
    if status is None:
        raise ParseError(f"not a SPAMD status line: {_quote(line)}")
    version, code, message = status.group(1), int(status.group(2)), status.group(3) or ""
    if code != 0:
        return Response(version, code, message)  # spamd sends the status line alone and closes
    length: int | None = None
    spam: SpamStatus | None = None
    while True:
        line, rest = _line(rest, "the headers")
        if not line:
            break
        header = _HEADER.fullmatch(line)
        if header is None:
            raise ParseError(f"header line not in 'Name: value' form: {_quote(line)}")
        name, value = header.group(1).lower(), header.group(2)
        if name == "content-length":
            if length is not None:
                raise ParseError("two Content-length headers")
            if not _LENGTH.fullmatch(value):
                raise ParseError(f"Content-length is not a byte count: {_quote(value)}")
            length = int(value)
        elif name == "spam":
            if spam is not None:
                raise ParseError("two Spam headers")
            spam = _spam_status(value)
    if length is not None and len(rest) != length:
        raise ParseError(f"Content-length {length} but {len(rest)} bytes followed")
    return Response(version, code, message, spam, rest)


def parse_symbols(body: bytes) -> tuple[str, ...]:
    """The rule names of a SYMBOLS answer's body: comma-separated, in spamd's (sorted) order.

    PROTOCOL: some versions end the list with CRLF and some do not, "clients should be flexible on whether or
    not a CR-LF pair follows the symbol text, and how many CR-LFs there are".
    """
    text = body.decode("latin-1").strip(" \t\r\n")
    if not text:
        return ()
    names = tuple(name.strip(" \t") for name in text.split(","))
    for name in names:
        if not _RULE.fullmatch(name):
            raise ParseError(f"not a rule name: {_quote(name)}")
    return names


def _line(data: bytes, where: str) -> tuple[str, bytes]:
    """The first line of data (without its CRLF or LF) and what follows it."""
    end = data.find(b"\n")
    if end < 0:
        raise ParseError(f"the answer ends inside {where}: {_quote(data)}")
    line = data[:end]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line.decode("latin-1"), data[end + 1:]


def _spam_status(value: str) -> SpamStatus:
    match = _SPAM.fullmatch(value)
    if match is None:
        raise ParseError(f"Spam header not 'True|False ; score / threshold': {_quote(value)}")
    score, required = float(match.group(2)), float(match.group(3))
    if not (math.isfinite(score) and math.isfinite(required)):
        raise ParseError(f"Spam header score out of range: {_quote(value)}")
    return SpamStatus(match.group(1).lower() in ("true", "yes"), score, required)


def _quote(text: bytes | str, limit: int = 80) -> str:
    """A peer's words for a one-line error: shortened, every control character escaped."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    shown = ascii(text[:limit])
    return shown + "..." if len(text) > limit else shown


def _reason(error: OSError) -> str:
    """What the system says went wrong ("Connection refused"), without asyncio's wrapping."""
    if isinstance(error, socket.gaierror) or not error.errno or error.errno < 0:
        return error.strerror or str(error) or type(error).__name__
    return os.strerror(error.errno)


class SpamdScanner:
    """A spamd client: every scan opens its own connection (spamd answers one request per connection)."""

    def __init__(self, config: ScannerConfig, hostname: str) -> None:
        self.name = config.name
        self.address: HostPort | UnixSocket = config.address
        self.user = config.user
        self.hostname = hostname  # SPAMC has no field for the scanning host's name; kept for the logs
        if self.user is not None and not _USER.fullmatch(self.user):
            raise ValueError(f"scanner {self.name!r}: user {self.user!r} is not a spamd user name "
                             "(printable ASCII, no spaces or colons)")

    async def scan(self, request: ScanRequest) -> Verdict:
        response = await self._exchange(request.data)
        if response.code != 0:
            raise self._error(f"refused the message: {response.code_name} ({response.code}) "
                              f"{_quote(response.message, 200)}")
        if response.status is None:
            raise self._error("answered EX_OK without a Spam header")
        try:
            rules = parse_symbols(response.body)
        except ParseError as error:
            raise self._error(f"malformed answer: {error}") from None
        return Verdict(scanner=self.name, score=response.status.score, required=response.status.required,
                       rules=rules)

    async def close(self) -> None:
        """Nothing is pooled: each scan's connection is closed when the scan ends, however it ends."""

    async def _exchange(self, message: bytes) -> Response:
        head = encode_request("SYMBOLS", message, self.user)
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                reader, writer = await self._connect()
            except OSError as error:
                raise self._error(f"cannot connect: {_reason(error)}") from None
            try:
                writer.write(head)
                writer.write(message)
                if writer.can_write_eof():
                    writer.write_eof()  # as spamc does (shutdown SHUT_WR); spamd stops at Content-length anyway
                await writer.drain()
            except OSError as error:
                raise self._error(f"connection lost while sending the message: {_reason(error)}") from None
            try:
                data = await self._read_all(reader)
            except OSError as error:
                raise self._error(f"connection lost while reading the answer: {_reason(error)}") from None
        finally:
            if writer is not None:
                # abort, not close: close() keeps the socket until the write buffer drains, which a peer that
                # stopped reading never lets happen; this also runs when the engine's timeout cancels the scan.
                writer.transport.abort()
        if not data:
            raise self._error("closed the connection without an answer")
        try:
            return parse_response(data)
        except ParseError as error:
            raise self._error(f"malformed answer: {error}") from None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.address, UnixSocket):
            return await asyncio.open_unix_connection(self.address.path)
        return await asyncio.open_connection(self.address.host, self.address.port)

    async def _read_all(self, reader: asyncio.StreamReader) -> bytes:
        """Everything up to the end of the stream, refusing more than MAX_RESPONSE bytes."""
        chunks: list[bytes] = []
        size = 0
        while chunk := await reader.read(_READ_CHUNK):
            size += len(chunk)
            if size > MAX_RESPONSE:
                raise self._error(f"answered more than {MAX_RESPONSE} bytes (not spamd?)")
            chunks.append(chunk)
        return b"".join(chunks)

    def _error(self, problem: str) -> ScanError:
        return ScanError(f"spamd at {self.address}: {problem}")
