"""POP3 command parser: one line of bytes in, a typed ``Command`` or a ``ParseError`` reason out.

Pure (no I/O, no state): the session state machine in ``appliance.pop3.session`` decides what a
command means in its current state. RFC 1939 §3: keywords are case-insensitive, arguments are
separated by single spaces; RFC 2449 §4 raises the command line limit to 255 octets, we allow
``MAX_LINE`` to leave room for long addresses and passwords.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE = 1024
MAX_MESSAGE_NUMBER = 2**31 - 1

NO_ARGUMENT = frozenset({"CAPA", "STAT", "NOOP", "RSET", "QUIT", "STLS"})
OPTIONAL_NUMBER = frozenset({"LIST", "UIDL"})
REQUIRED_NUMBER = frozenset({"RETR", "DELE"})
COMMANDS = NO_ARGUMENT | OPTIONAL_NUMBER | REQUIRED_NUMBER | {"TOP", "USER", "PASS", "AUTH"}


@dataclass(frozen=True)
class Command:
    """A syntactically valid POP3 command.

    ``number``: message number (LIST, UIDL, RETR, DELE, TOP); ``lines``: TOP's line count;
    ``text``: USER name, PASS password (spaces kept, RFC 1939 §7) or AUTH mechanism (upper case);
    ``initial``: AUTH initial response (RFC 5034 §4), base64 or "=".
    """

    name: str
    number: int | None = None
    lines: int | None = None
    text: str | None = None
    initial: str | None = None

    def __repr__(self) -> str:  # keep passwords and SASL responses out of logs and test output
        if self.name in ("PASS", "AUTH"):
            return f"Command({self.name!r}, <masked>)"
        return f"Command({self.name!r}, number={self.number}, lines={self.lines}, text={self.text!r})"


@dataclass(frozen=True)
class ParseError:
    """Why a line is not a valid command; safe to send after "-ERR "."""

    reason: str


def strip_line_ending(line: bytes) -> bytes:
    """Remove one CRLF (or a bare LF, which lenient clients send)."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


def _number(word: str, what: str) -> int | ParseError:
    if not word.isascii() or not word.isdigit():
        return ParseError(f"{what} must be a decimal number, not {word[:20]!r}")
    value = int(word)
    if value > MAX_MESSAGE_NUMBER:
        return ParseError(f"{what} {word[:20]} is out of range")
    return value


def parse_command(line: bytes) -> Command | ParseError:
    """Parse one command line (with or without its CRLF)."""
    if len(line) > MAX_LINE:
        return ParseError(f"line longer than {MAX_LINE} octets")
    raw = strip_line_ending(line)
    if b"\r" in raw or b"\n" in raw or b"\x00" in raw:
        return ParseError("control characters (CR, LF, NUL) inside the command line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ParseError("command line is not valid UTF-8")
    keyword, _, rest = text.partition(" ")
    name = keyword.upper()
    if not keyword:
        return ParseError("empty command")
    if name not in COMMANDS:
        shown = keyword[:10] if keyword.isprintable() else "?"
        return ParseError(f"unknown command {shown!r}")
    if name == "PASS":
        # RFC 1939 §7: PASS has one argument, which may contain spaces.
        return Command(name, text=rest) if rest else ParseError("PASS needs the password as argument")
    if name == "USER":
        name_arg = rest.strip()
        return Command(name, text=name_arg) if name_arg else ParseError("USER needs a name as argument")
    words = rest.split()
    if name in NO_ARGUMENT:
        return Command(name) if not words else ParseError(f"{name} takes no argument")
    if name == "AUTH":
        return _parse_auth(words)
    if name in OPTIONAL_NUMBER or name in REQUIRED_NUMBER:
        if len(words) > 1 or (name in REQUIRED_NUMBER and not words):
            return ParseError(f"{name} takes {'one' if name in REQUIRED_NUMBER else 'at most one'} message number")
        if not words:
            return Command(name)
        number = _number(words[0], "message number")
        return number if isinstance(number, ParseError) else Command(name, number=number)
    return _parse_top(words)


def _parse_top(words: list[str]) -> Command | ParseError:
    if len(words) != 2:
        return ParseError("TOP takes a message number and a line count")
    number = _number(words[0], "message number")
    if isinstance(number, ParseError):
        return number
    lines = _number(words[1], "line count")
    if isinstance(lines, ParseError):
        return lines
    return Command("TOP", number=number, lines=lines)


def _parse_auth(words: list[str]) -> Command | ParseError:
    if not words:
        return Command("AUTH")
    if len(words) > 2:
        return ParseError("AUTH takes a mechanism and an optional initial response")
    mechanism = words[0].upper()
    if not mechanism.isascii() or not all(c.isalnum() or c in "-_" for c in mechanism) or len(mechanism) > 20:
        return ParseError("malformed SASL mechanism name")
    return Command("AUTH", text=mechanism, initial=words[1] if len(words) == 2 else None)
