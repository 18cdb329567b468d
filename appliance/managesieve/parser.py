"""ManageSieve commands from bytes (RFC 5804 §4): pure, no I/O, tested by itself.

The input is one whole command as ``wire.Wire`` reads it: the command line without its final CRLF, each
literal's octets inlined after its ``{n+}`` (or ``{n}``) announcement and CRLF, as in IMAP. The result is a
``Command`` (name in upper case, its strings decoded as UTF-8, HAVESPACE's number) or a ``ParseError`` whose
reason the session sends in a NO response (ManageSieve has no BAD, RFC 5804 §1.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_QUOTED = 1024  # RFC 5804 §4: quoted = DQUOTE *1024QUOTED-CHAR DQUOTE
MAX_NUMBER = 4294967295  # RFC 5804 §4: number = 1*DIGIT, 0..4294967295

_LITERAL = re.compile(rb"\{(\d{1,10})(\+?)\}\r\n")
_NUMBER = re.compile(rb"\d{1,10}")
_ATOM = re.compile(rb"[A-Za-z]+")

# Each command's arguments: "s" a string, "n" a number, "?s" an optional trailing string (RFC 5804 §2).
SIGNATURES: dict[str, tuple[str, ...]] = {
    "AUTHENTICATE": ("s", "?s"),
    "STARTTLS": (),
    "LOGOUT": (),
    "CAPABILITY": (),
    "HAVESPACE": ("s", "n"),
    "PUTSCRIPT": ("s", "s"),
    "LISTSCRIPTS": (),
    "SETACTIVE": ("s",),
    "GETSCRIPT": ("s",),
    "DELETESCRIPT": ("s",),
    "RENAMESCRIPT": ("s", "s"),
    "CHECKSCRIPT": ("s",),
    "NOOP": ("?s",),
    "UNAUTHENTICATE": (),
}


class ParseError(ValueError):
    """A command that cannot be understood; ``reason`` is one line, safe to send to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...] = ()
    number: int | None = None  # HAVESPACE's size


def parse_command(raw: bytes) -> Command:
    """Parse one command (see the module docstring for the framing)."""
    match = _ATOM.match(raw)
    if match is None:
        raise ParseError("expected a command name")
    name = match.group().decode("ascii").upper()
    signature = SIGNATURES.get(name)
    if signature is None:
        raise ParseError(f"unknown command {name[:32]}")
    pos = match.end()
    if pos < len(raw) and raw[pos] != 0x20:
        raise ParseError(f"{name}: expected a space after the command name")
    args: list[str] = []
    number: int | None = None
    for kind in signature:
        if pos >= len(raw):
            if kind.startswith("?"):
                break
            raise ParseError(f"{name}: missing argument")
        pos = _space(raw, pos, name)
        if kind == "n":
            number, pos = _number(raw, pos, name)
        else:
            text, pos = parse_string(raw, pos)
            args.append(text)
    if pos != len(raw):
        raise ParseError(f"{name}: unexpected data after the arguments")
    return Command(name, tuple(args), number)


def parse_sasl_response(raw: bytes) -> str:
    """A client's SASL response line: one string (RFC 5804 §2.1: quoted or literal)."""
    text, pos = parse_string(raw, 0)
    if pos != len(raw):
        raise ParseError("unexpected data after the SASL response")
    return text


def parse_string(raw: bytes, pos: int) -> tuple[str, int]:
    """A quoted string or a literal at ``pos``: (its text, the position after it)."""
    if raw[pos:pos + 1] == b'"':
        data, pos = _quoted(raw, pos)
    elif raw[pos:pos + 1] == b"{":
        data, pos = _literal(raw, pos)
    else:
        raise ParseError("expected a string (quoted or literal)")
    try:
        return data.decode("utf-8"), pos
    except UnicodeDecodeError:
        raise ParseError("string is not valid UTF-8 (RFC 5804 §4)") from None


def _space(raw: bytes, pos: int, name: str) -> int:
    if raw[pos:pos + 1] != b" ":
        raise ParseError(f"{name}: expected a space between arguments")
    return pos + 1


def _number(raw: bytes, pos: int, name: str) -> tuple[int, int]:
    match = _NUMBER.match(raw, pos)
    if match is None or int(match.group()) > MAX_NUMBER:
        raise ParseError(f"{name}: expected a number from 0 to {MAX_NUMBER}")
    return int(match.group()), match.end()


def _quoted(raw: bytes, pos: int) -> tuple[bytes, int]:
    """RFC 5804 §4: QUOTED-CHAR is any octet but NUL, CR, LF, '"' and '\\'; those two escaped by '\\'."""
    out = bytearray()
    i = pos + 1
    while i < len(raw):
        byte = raw[i]
        if byte == 0x22:
            if len(out) > MAX_QUOTED:
                raise ParseError(f"quoted string longer than {MAX_QUOTED} octets: use a literal")
            return bytes(out), i + 1
        if byte == 0x5C:
            if raw[i + 1:i + 2] not in (b'"', b"\\"):
                raise ParseError("in a quoted string '\\' escapes only '\"' and '\\'")
            out.append(raw[i + 1])
            i += 2
            continue
        if byte in (0x00, 0x0A, 0x0D):
            raise ParseError("a quoted string cannot hold NUL, CR or LF: use a literal")
        out.append(byte)
        i += 1
    raise ParseError("quoted string without its closing '\"'")


def _literal(raw: bytes, pos: int) -> tuple[bytes, int]:
    """RFC 5804 §4 literal-c2s ``{n+}``; the synchronising ``{n}`` is taken the same way, as Dovecot does
    (ManageSieve has no continuation for literals, so a client must not wait after it)."""
    match = _LITERAL.match(raw, pos)
    if match is None:
        raise ParseError("malformed literal: expected {size+} and CRLF")
    size = int(match.group(1))
    end = match.end() + size
    if end > len(raw):
        raise ParseError("literal shorter than its announced size")
    return raw[match.end():end], end
