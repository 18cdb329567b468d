"""The SMTP command parser: bytes of one command line in, a typed command or the reply that refuses it out.

Pure functions, no session state (the state machine is ``smtp.protocol``), so hypothesis can test them alone.
The answers follow aiosmtpd's, whose parser the tests compare these functions with: the same refusals for the
same input, with the plain path parsed without the email package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email._header_value_parser import get_addr_spec, get_angle_addr  # what aiosmtpd and smtpd use
from email.errors import HeaderParseError

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF; MAIL may grow by the parameters
# of the extensions we announce (SIZE=: 26, SMTPUTF8: 10; RFC 1870 §3, RFC 6531 §3.4).
COMMAND_LIMIT = 512
MAIL_LIMIT_EXTENDED = COMMAND_LIMIT + 26 + 10
# Bytes without a line end before a command line counts as "too long" and is skipped to its end.
READ_LIMIT = 1001

BAD_SYNTAX = "500 Error: bad syntax"
NUL_IN_COMMAND = "500 5.5.2 Error: NUL character in the command"
LINE_TOO_LONG = "500 Command line too long"


class CommandError(ValueError):
    """A line that is no command at all; ``reply`` is the answer."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Command:
    verb: str  # upper case ASCII
    arg: str | None  # stripped; None when absent; non-UTF-8 bytes kept as lone surrogates
    length: int  # octets without the line end, for the length limit


def parse_command(line: bytes) -> Command:
    """One line as read (with its CRLF or LF) -> Command; CommandError for an empty or non-ASCII verb."""
    text = line.rstrip(b"\r\n")
    if not text:
        raise CommandError(BAD_SYNTAX)
    if b"\0" in text:  # RFC 5321 §2.4: commands are text; a NUL would cut the line short for a C peer
        raise CommandError(NUL_IN_COMMAND)
    verb, _, rest = text.partition(b" ")
    try:
        name = verb.upper().decode("ascii")
    except UnicodeDecodeError:
        raise CommandError(BAD_SYNTAX) from None
    arg = None
    if rest:
        # RFC 6531: arguments may be UTF-8; bytes that are not stay recoverable (and are refused later).
        arg = rest.strip().decode("utf-8", "surrogateescape")
    return Command(name, arg, len(text))


def strip_keyword(keyword: str, arg: str) -> str | None:
    """"FROM:<a@b>" -> "<a@b>" for keyword "FROM:" (any case); None when the keyword is missing."""
    if arg[: len(keyword)].upper() == keyword:
        return arg[len(keyword):].strip()
    return None


# The path almost every client sends: <dot-atom@domain> and then the parameters, if any.
_PLAIN_PATH = re.compile(r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                         r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*")


def parse_path(arg: str) -> tuple[str | None, str | None]:
    """MAIL/RCPT argument after the keyword -> (address, the rest: parameters); (None, None) when malformed.

    The null path "<>" comes back as "<>"; an empty argument as ("", ""). The plain form is matched by a
    regular expression; anything else (quotes, comments, literals, source routes) goes through the email
    package's RFC 5322 parser, as in aiosmtpd (a hypothesis test compares both).
    """
    if not arg:
        return "", ""
    match = _PLAIN_PATH.match(arg)
    if match is not None and not arg.startswith("(", match.end()):
        return match.group(1), arg[match.end():]
    try:
        token = get_angle_addr(arg) if arg.lstrip().startswith("<") else get_addr_spec(arg)
        return token[0].addr_spec, token[1]
    except (HeaderParseError, IndexError, ValueError, AttributeError):  # it trips over fragments: "<", "a@["
        return None, None


def parse_params(words: list[str]) -> dict[str, str | bool] | None:
    """ESMTP parameters (RFC 5321 §4.1.2 esmtp-param) -> {KEYWORD: value or True}; None if one is malformed."""
    result: dict[str, str | bool] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not key.isalnum() or (eq and not value):
            return None
        result[key] = value if eq else True
    return result


@dataclass(frozen=True, slots=True)
class MailParams:
    smtputf8: bool
    size: int  # declared with SIZE=, 0 when not


def check_mail_params(params: dict[str, str | bool], size_limit: int, syntax_error: str) -> MailParams | str:
    """The MAIL FROM parameters we announce (BODY, SMTPUTF8, SIZE) -> MailParams, or the refusal."""
    params = dict(params)
    body = params.pop("BODY", "7BIT")
    if body not in ("7BIT", "8BITMIME"):  # RFC 6152
        return "501 Error: BODY can only be one of 7BIT, 8BITMIME"
    smtputf8 = params.pop("SMTPUTF8", False)
    if not isinstance(smtputf8, bool):
        return "501 Error: SMTPUTF8 takes no arguments"
    size = params.pop("SIZE", None)
    declared = 0
    if size:
        if isinstance(size, bool) or not size.isdigit():
            return syntax_error
        declared = int(size)
        if size_limit and declared > size_limit:  # RFC 1870 §6.1
            return "552 Error: message size exceeds fixed maximum message size"
    if params:
        return "555 MAIL FROM parameters not recognized or not implemented"
    return MailParams(smtputf8, declared)
