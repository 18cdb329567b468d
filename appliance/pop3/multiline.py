"""POP3 multi-line responses: CRLF line endings, byte-stuffing, the terminating ".", TOP's cut.

RFC 1939 §3: each line of a multi-line response ends with CRLF; a line starting with "." gets one
more "." prepended (byte-stuffing); the response ends with a line holding a single ".".
"""

from __future__ import annotations

import re

_LINE_END = re.compile(rb"\r?\n")


def split_lines(data: bytes) -> list[bytes]:
    """The message's lines without their endings (CRLF or a bare LF stored by a lenient writer)."""
    lines = _LINE_END.split(data)
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def encode_lines(lines: list[bytes]) -> bytes:
    """Byte-stuff ``lines`` and add the terminating "." line (RFC 1939 §3)."""
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    if not stuffed:
        return b".\r\n"
    return b"\r\n".join(stuffed) + b"\r\n.\r\n"


_DOT_AT_LINE_START = re.compile(rb"^\.", re.MULTILINE)


def encode_message(data: bytes) -> bytes:
    """The RETR body of a stored message: same bytes as ``encode_lines(split_lines(data))``, built with
    two whole-buffer passes instead of one object per line, since messages can be tens of megabytes."""
    if not data:
        return b".\r\n"
    wire = _DOT_AT_LINE_START.sub(b"..", _LINE_END.sub(b"\r\n", data))
    if not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    return wire + b".\r\n"


def top_lines(data: bytes, count: int) -> list[bytes]:
    """Header, the blank separator line, then the first ``count`` body lines (RFC 1939 §7 TOP)."""
    lines = split_lines(data)
    for index, line in enumerate(lines):
        if line == b"":
            return lines[: index + 1 + count]
    return lines  # no body at all: the whole message is header


def transmitted_size(data: bytes) -> int:
    """Octets of the message as sent with CRLF endings, before stuffing (RFC 1939 §5 "exact size")."""
    return sum(len(line) + 2 for line in split_lines(data))
