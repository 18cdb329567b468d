"""The milter protocol's wire format, version 6 (Sendmail 8.14+ libmilter, Postfix's milter8.c): packets, the
commands an MTA sends and the replies a milter answers, as typed values. Pure: bytes in, values out, no I/O.

A packet is a 4-byte big-endian length (of what follows it), a command byte and the command's data
(include/libmilter/mfdef.h: MILTER_LEN_BYTES, SMFIC_*, SMFIR_*). Strings are NUL-terminated; numbers are 32-bit
big-endian, the client's port in CONNECT 16-bit. Text is UTF-8: what we send is encoded with surrogateescape, so
that a message's own 8-bit header bytes (decoded the same way) reach the milter unchanged; what a milter sends
is decoded with replacement characters, so no undecodable byte travels on into the appliance.

Anything a milter sends that does not fit (a length out of bounds, a missing NUL, data where none belongs, an
unknown reply code, an SMTP reply that is not a 4xx/5xx reply) raises MilterProtocolError, one line saying what.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

VERSION = 6  # SMFI_PROT_VERSION
CHUNK_SIZE = 65535  # MILTER_CHUNK_SIZE: the largest body chunk; libmilter refuses bigger commands by default
# The largest reply packet we read. libmilter sends at most MILTER_MAX_DATA_SIZE (64 KiB, 1 MiB after the
# SMFIP_MDS_1M extension) at a time; Postfix allows up to INT_MAX / 2, which lets a hostile milter make us hold
# a gigabyte. 2 MiB covers every legitimate reply.
MAX_PACKET = 2 * 1024 * 1024


class MilterProtocolError(Exception):
    """A milter sent something the protocol does not allow; str() is one line saying what."""


class Actions(enum.IntFlag):
    """SMFIF_*: the modifications a milter may ask for (mfapi.h)."""

    ADDHDRS = 0x001
    CHGBODY = 0x002
    ADDRCPT = 0x004
    DELRCPT = 0x008
    CHGHDRS = 0x010
    QUARANTINE = 0x020
    CHGFROM = 0x040
    ADDRCPT_PAR = 0x080
    SETSYMLIST = 0x100


class Protocol(enum.IntFlag):
    """SMFIP_*: steps a milter does not want (NO*), steps it does not answer (NR_*), and extensions (mfdef.h)."""

    NOCONNECT = 0x000001
    NOHELO = 0x000002
    NOMAIL = 0x000004
    NORCPT = 0x000008
    NOBODY = 0x000010
    NOHDRS = 0x000020
    NOEOH = 0x000040
    NR_HDR = 0x000080
    NOUNKNOWN = 0x000100
    NODATA = 0x000200
    SKIP = 0x000400  # the MTA understands SMFIR_SKIP
    RCPT_REJ = 0x000800  # the MTA also sends rejected recipients
    NR_CONN = 0x001000
    NR_HELO = 0x002000
    NR_MAIL = 0x004000
    NR_RCPT = 0x008000
    NR_DATA = 0x010000
    NR_UNKN = 0x020000
    NR_EOH = 0x040000
    NR_BODY = 0x080000
    HDR_LEADSPC = 0x100000  # header values are sent and taken with their leading space


class MacroStage(enum.IntEnum):
    """SMFIM_*: the stages a milter may name macro lists for in its OPTNEG reply (mfapi.h)."""

    CONNECT = 0
    HELO = 1
    ENVFROM = 2
    ENVRCPT = 3
    DATA = 4
    EOM = 5
    EOH = 6


# SMFIC_MACRO names the command its macros are for; libmilter keeps them for these commands only (engine.c,
# st_macros).
MACRO_COMMAND = {
    MacroStage.CONNECT: "C", MacroStage.HELO: "H", MacroStage.ENVFROM: "M", MacroStage.ENVRCPT: "R",
    MacroStage.DATA: "T", MacroStage.EOM: "E", MacroStage.EOH: "N",
}

# Address families of SMFIC_CONNECT.
FAMILY_UNKNOWN, FAMILY_UNIX, FAMILY_INET, FAMILY_INET6 = "U", "L", "4", "6"
FAMILIES = (FAMILY_UNKNOWN, FAMILY_UNIX, FAMILY_INET, FAMILY_INET6)


# -- commands (MTA to milter) -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OptNeg:
    """SMFIC_OPTNEG, and the milter's answer to it: the version, the actions and the protocol flags; the answer
    may add macro lists (SMFIM_* stage, space-separated names), as smfi_setsymlist asks."""

    version: int
    actions: int
    protocol: int
    macros: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DefineMacros:
    """SMFIC_MACRO: macro values for the command ``stage`` (its SMFIC letter) about to be sent."""

    stage: str
    macros: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Connect:
    hostname: str
    family: str  # FAMILY_*
    port: int = 0
    address: str = ""  # absent on the wire for FAMILY_UNKNOWN


@dataclass(frozen=True, slots=True)
class Helo:
    name: str


@dataclass(frozen=True, slots=True)
class Mail:
    args: tuple[str, ...]  # "<sender>", then the ESMTP parameters


@dataclass(frozen=True, slots=True)
class Rcpt:
    args: tuple[str, ...]  # "<recipient>", then the ESMTP parameters


@dataclass(frozen=True, slots=True)
class Header:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Body:
    chunk: bytes  # at most CHUNK_SIZE bytes


@dataclass(frozen=True, slots=True)
class Unknown:
    command: str


class Step(enum.Enum):
    """The commands that carry no data, by their SMFIC letter."""

    DATA = "T"
    END_OF_HEADERS = "N"
    END_OF_BODY = "E"
    ABORT = "A"
    QUIT = "Q"
    QUIT_NEW_CONNECTION = "K"


Command = OptNeg | DefineMacros | Connect | Helo | Mail | Rcpt | Header | Body | Unknown | Step


# -- replies (milter to MTA) --------------------------------------------------------------------------------

class Status(enum.Enum):
    """The replies that carry no data, by their SMFIR letter."""

    ACCEPT = "a"
    CONTINUE = "c"
    DISCARD = "d"
    REJECT = "r"
    TEMPFAIL = "t"
    SKIP = "s"
    PROGRESS = "p"
    CONN_FAIL = "f"
    SHUTDOWN = "4"


@dataclass(frozen=True, slots=True)
class ReplyCode:
    """SMFIR_REPLYCODE: the milter's own SMTP reply, one or more lines joined by CRLF, each "4xx" or "5xx"."""

    text: str

    @property
    def permanent(self) -> bool:
        return self.text.startswith("5")


@dataclass(frozen=True, slots=True)
class AddHeader:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class InsertHeader:
    index: int  # 0 = before the first header field
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ChangeHeader:
    index: int  # the index-th (1-based; libmilter's 0 means 1) field of that name; value "" deletes it
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ReplaceBody:
    chunk: bytes  # one part of the new body; a body longer than CHUNK_SIZE comes in several


@dataclass(frozen=True, slots=True)
class ChangeFrom:
    sender: str  # as the milter gives it, usually in angle brackets
    parameters: str | None = None  # ESMTP parameters, when given


@dataclass(frozen=True, slots=True)
class AddRecipient:
    address: str
    parameters: str | None = None  # with SMFIR_ADDRCPT_PAR


@dataclass(frozen=True, slots=True)
class DeleteRecipient:
    address: str


@dataclass(frozen=True, slots=True)
class Quarantine:
    reason: str


@dataclass(frozen=True, slots=True)
class SetSymList:
    stage: int
    names: str


Reply = (Status | ReplyCode | AddHeader | InsertHeader | ChangeHeader | ReplaceBody | ChangeFrom | AddRecipient
         | DeleteRecipient | Quarantine | SetSymList | OptNeg)
Modification = AddHeader | InsertHeader | ChangeHeader | ReplaceBody | ChangeFrom | AddRecipient | DeleteRecipient

_E = TypeVar("_E", "Status", "Step")
_STATUSES = {ord(status.value): status for status in Status}
_STEPS = {ord(step.value): step for step in Step}
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


# -- encoding -----------------------------------------------------------------------------------------------

def packet(code: int, data: bytes = b"") -> bytes:
    """One packet: length, code, data."""
    return _U32.pack(len(data) + 1) + bytes((code,)) + data


def _string(text: str) -> bytes:
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        raw = text.encode("utf-8", "replace")
    if b"\0" in raw:
        raise ValueError(f"a milter string cannot hold a NUL: {text!r}")
    return raw + b"\0"


def _strings(texts: Iterable[str]) -> bytes:
    return b"".join(_string(text) for text in texts)


def _macro_lists(macros: Iterable[tuple[int, str]]) -> bytes:
    return b"".join(_U32.pack(stage) + _string(names) for stage, names in macros)


def _optneg(value: OptNeg) -> bytes:
    return _U32.pack(value.version) + _U32.pack(value.actions) + _U32.pack(value.protocol) + _macro_lists(
        value.macros)


def encode(command: Command) -> bytes:
    """The packet of an MTA command."""
    match command:
        case OptNeg():
            return packet(ord("O"), _optneg(command))
        case DefineMacros(stage=stage, macros=macros):
            if len(stage) != 1:
                raise ValueError(f"a macro stage is one command letter, not {stage!r}")
            return packet(ord("D"), stage.encode("ascii") + _strings(text for pair in macros for text in pair))
        case Connect(hostname=hostname, family=family, port=port, address=address):
            if family not in FAMILIES:
                raise ValueError(f"unknown address family {family!r}")
            data = _string(hostname) + family.encode("ascii")
            if family != FAMILY_UNKNOWN:
                data += _U16.pack(port) + _string(address)
            return packet(ord("C"), data)
        case Helo(name=name):
            return packet(ord("H"), _string(name))
        case Mail(args=args):
            return packet(ord("M"), _strings(args))
        case Rcpt(args=args):
            return packet(ord("R"), _strings(args))
        case Header(name=name, value=value):
            return packet(ord("L"), _string(name) + _string(value))
        case Body(chunk=chunk):
            if len(chunk) > CHUNK_SIZE:
                raise ValueError(f"a body chunk is at most {CHUNK_SIZE} bytes, not {len(chunk)}")
            return packet(ord("B"), chunk)
        case Unknown(command=text):
            return packet(ord("U"), _string(text))
        case Step():
            return packet(ord(command.value))
    raise TypeError(f"not a milter command: {command!r}")


def body_chunks(body: bytes) -> Iterator[Body]:
    """The body as SMFIC_BODY commands of at most CHUNK_SIZE bytes each (none for an empty body)."""
    view = memoryview(body)
    for start in range(0, len(body), CHUNK_SIZE):
        yield Body(bytes(view[start:start + CHUNK_SIZE]))


def encode_reply(reply: Reply) -> bytes:
    """The packet of a milter reply (what libmilter sends; for tests and test peers)."""
    match reply:
        case OptNeg():
            return packet(ord("O"), _optneg(reply))
        case ReplyCode(text=text):
            return packet(ord("y"), _string(text.replace("%", "%%")))
        case AddHeader(name=name, value=value):
            return packet(ord("h"), _string(name) + _string(value))
        case InsertHeader(index=index, name=name, value=value):
            return packet(ord("i"), _U32.pack(index) + _string(name) + _string(value))
        case ChangeHeader(index=index, name=name, value=value):
            return packet(ord("m"), _U32.pack(index) + _string(name) + _string(value))
        case ReplaceBody(chunk=chunk):
            return packet(ord("b"), chunk)
        case ChangeFrom(sender=sender, parameters=parameters):
            return packet(ord("e"), _string(sender) + (b"" if parameters is None else _string(parameters)))
        case AddRecipient(address=address, parameters=None):
            return packet(ord("+"), _string(address))
        case AddRecipient(address=address, parameters=str(parameters)):
            return packet(ord("2"), _string(address) + _string(parameters))
        case DeleteRecipient(address=address):
            return packet(ord("-"), _string(address))
        case Quarantine(reason=reason):
            return packet(ord("q"), _string(reason))
        case SetSymList(stage=stage, names=names):
            return packet(ord("l"), _U32.pack(stage) + _string(names))
        case Status():
            return packet(ord(reply.value))
    raise TypeError(f"not a milter reply: {reply!r}")


# -- decoding -----------------------------------------------------------------------------------------------

class _Fields:
    """Reads the fields of one packet's data in order; every shortfall is a MilterProtocolError."""

    def __init__(self, what: str, data: bytes) -> None:
        self._what = what
        self._data = data
        self._at = 0

    @property
    def left(self) -> int:
        return len(self._data) - self._at

    def u32(self) -> int:
        return self._number(_U32, "a 32-bit number")

    def u16(self) -> int:
        return self._number(_U16, "a 16-bit port")

    def _number(self, layout: struct.Struct, what: str) -> int:
        if self.left < layout.size:
            raise MilterProtocolError(f"{self._what}: {self.left} bytes where {what} belongs")
        (value,) = layout.unpack_from(self._data, self._at)
        self._at += layout.size
        return int(value)

    def octet(self) -> str:
        if self.left < 1:
            raise MilterProtocolError(f"{self._what}: data ends where a byte belongs")
        value = chr(self._data[self._at])
        self._at += 1
        return value

    def raw_string(self) -> bytes:
        end = self._data.find(b"\0", self._at)
        if end < 0:
            raise MilterProtocolError(f"{self._what}: a string without its terminating NUL")
        value = self._data[self._at:end]
        self._at = end + 1
        return value

    def string(self) -> str:
        return self.raw_string().decode("utf-8", "replace")

    def rest(self) -> bytes:
        value = self._data[self._at:]
        self._at = len(self._data)
        return value

    def end(self) -> None:
        if self.left:
            raise MilterProtocolError(f"{self._what}: {self.left} bytes of data left over")


def _optneg_fields(fields: _Fields) -> OptNeg:
    version, actions, protocol = fields.u32(), fields.u32(), fields.u32()
    macros = []
    while fields.left:
        macros.append((fields.u32(), fields.string()))
    return OptNeg(version, actions, protocol, tuple(macros))


def _reply_text(raw: bytes) -> str:
    """The text of SMFIR_REPLYCODE, checked: every line "[45]dd-" but the last "[45]dd ", lines joined by CRLF,
    one code throughout, no other CR, LF or NUL (Postfix's milter8_valid_smtp_reply); Sendmail's "%%" is "%"
    (libmilter's smfi_setreply: the text is a printf format)."""
    text = raw.decode("utf-8", "replace")
    lines = text.split("\r\n")
    code = text[:3]
    for number, line in enumerate(lines, 1):
        last = number == len(lines)
        if not _REPLY_LINE.match(line) or line[:3] != code or line[3] != (" " if last else "-") or (
                "\r" in line or "\n" in line):
            raise MilterProtocolError(f"SMFIR_REPLYCODE: not a 4xx or 5xx SMTP reply: {text[:200]!r}")
        if len(line) > 4 and line[4].isdigit() and line[4] != code[0]:
            raise MilterProtocolError(f"SMFIR_REPLYCODE: enhanced code class differs from the reply's: {line!r}")
    return _PERCENT.sub(lambda match: match.group(0)[1:], text)


_REPLY_LINE = re.compile(r"[45][0-9][0-9][ -]")
_PERCENT = re.compile(r"%%|%")  # "%%" is one "%"; a single "%" (an invalid format) is dropped, as Postfix does


def _without_data(name: str, value: _E | None, data: bytes) -> _E | None:
    """A command or reply of those that carry no data, checked to carry none."""
    if value is not None and data:
        raise MilterProtocolError(f"{name} carries {len(data)} bytes of data; it has none")
    return value


def decode_reply(code: int, data: bytes) -> Reply:
    """One reply from its code byte and data; MilterProtocolError when it is not a valid reply."""
    name = f"reply {chr(code)!r}"
    status = _without_data(name, _STATUSES.get(code), data)
    if status is not None:
        return status
    fields = _Fields(name, data)
    reply: Reply
    if code == ord("y"):
        reply = ReplyCode(_reply_text(fields.raw_string()))
    elif code == ord("h"):
        reply = AddHeader(fields.string(), fields.string())
    elif code == ord("i"):
        reply = InsertHeader(fields.u32(), fields.string(), fields.string())
    elif code == ord("m"):
        reply = ChangeHeader(fields.u32(), fields.string(), fields.string())
    elif code == ord("b"):
        reply = ReplaceBody(fields.rest())
    elif code == ord("e") or code == ord("2"):
        address = fields.string()
        parameters = fields.string() if fields.left else None
        reply = ChangeFrom(address, parameters) if code == ord("e") else AddRecipient(address, parameters)
    elif code == ord("+"):
        reply = AddRecipient(fields.string())
    elif code == ord("-"):
        reply = DeleteRecipient(fields.string())
    elif code == ord("q"):
        reply = Quarantine(fields.string())
    elif code == ord("l"):
        reply = SetSymList(fields.u32(), fields.string())
    elif code == ord("O"):
        reply = _optneg_fields(fields)
    else:
        raise MilterProtocolError(f"unknown reply code {code:#04x} ({chr(code)!r})")
    fields.end()
    return reply


def decode_command(code: int, data: bytes) -> Command:
    """One MTA command from its code byte and data (what a milter reads; for tests and test peers)."""
    name = f"command {chr(code)!r}"
    step = _without_data(name, _STEPS.get(code), data)
    if step is not None:
        return step
    fields = _Fields(name, data)
    command: Command

    def strings(count: int | None = None) -> tuple[str, ...]:
        values = []
        while fields.left:
            values.append(fields.raw_string().decode("utf-8", "surrogateescape"))
        if count is not None and len(values) != count:
            raise MilterProtocolError(f"{name}: {len(values)} strings where {count} belong")
        return tuple(values)

    if code == ord("O"):
        command = _optneg_fields(fields)
    elif code == ord("D"):
        stage = fields.octet()
        texts = strings()
        if len(texts) % 2:
            raise MilterProtocolError(f"{name}: a macro name without its value")
        command = DefineMacros(stage, tuple(zip(texts[::2], texts[1::2], strict=True)))
    elif code == ord("C"):
        hostname = fields.raw_string().decode("utf-8", "surrogateescape")
        family = fields.octet()
        if family not in FAMILIES:
            raise MilterProtocolError(f"{name}: unknown address family {family!r}")
        if family == FAMILY_UNKNOWN:
            command = Connect(hostname, family)
        else:
            command = Connect(hostname, family, fields.u16(), fields.raw_string().decode("utf-8", "surrogateescape"))
    elif code == ord("H") or code == ord("U"):
        (text,) = strings(1)
        command = Helo(text) if code == ord("H") else Unknown(text)
    elif code == ord("M"):
        command = Mail(strings())
    elif code == ord("R"):
        command = Rcpt(strings())
    elif code == ord("L"):
        header_name, value = strings(2)
        command = Header(header_name, value)
    elif code == ord("B"):
        command = Body(fields.rest())
    else:
        raise MilterProtocolError(f"unknown command code {code:#04x} ({chr(code)!r})")
    fields.end()
    return command


class ReplyDecoder:
    """Splits what a milter sends into packets and decodes each; bytes may arrive in any pieces."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self._buffer = bytearray()
        self._max = max_packet

    @property
    def pending(self) -> int:
        """Bytes received that are not yet a whole packet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Reply]:
        """The replies completed by ``data``, in order; MilterProtocolError for the first malformed one."""
        buffer = self._buffer
        buffer += data
        replies = []
        while len(buffer) >= 4:
            (length,) = _U32.unpack_from(buffer)
            if length < 1:
                raise MilterProtocolError("a packet of length 0 (no reply code)")
            if length > self._max:
                raise MilterProtocolError(f"a packet of {length} bytes, more than the {self._max} we accept")
            if len(buffer) < 4 + length:
                break
            code, body = buffer[4], bytes(buffer[5:4 + length])
            del buffer[:4 + length]
            replies.append(decode_reply(code, body))
        return replies
