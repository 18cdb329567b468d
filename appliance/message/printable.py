"""Client-supplied text made safe for a log line or a trace header: one function for every place.

A log line is one record: a CR, LF or terminal escape (ESC) from a client would forge a line of its own or
rewrite the operator's terminal (issue 15: ``EHLO evil\\r<fake log line>\\x1b[2K``). So control characters and
other non-printables are escaped as Python writes them (``\\r``, ``\\x1b``, ``\\u202e``; a byte that was not
UTF-8, kept by the parser as a lone surrogate, as ``\\xNN``), and the text is bounded.
"""

from __future__ import annotations

LIMIT = 512  # characters kept of one value: above any address or host name (RFC 5321 §4.5.3.1), below a flood
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte the client sent
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, limit: int | None = LIMIT, *, ascii_only: bool = False) -> str:
    """``text`` with every non-printable character escaped and at most ``limit`` characters of it kept (then
    "..." marks the cut); ``ascii_only`` escapes non-ASCII too (a header field of a message that is not
    SMTPUTF8). The common case, short printable text, costs one length test and one isprintable()."""
    clipped = limit is not None and len(text) > limit
    if clipped:
        text = text[:limit]
    if not (text.isprintable() and (not ascii_only or text.isascii())):
        text = "".join(c if c.isprintable() and (not ascii_only or c < "\x7f") else _escape(c) for c in text)
    return text + "..." if clipped else text
