"""Encoding of IMAP response values (RFC 3501 §4 data formats).

Responses are built as ``str`` in which every character stands for one byte (latin-1), so that
message bytes pass through untouched; ``encode`` turns the finished line into bytes.
"""

from __future__ import annotations

import re
from contextvars import ContextVar

from appliance.store import mutf7

_UNQUOTABLE = re.compile(r"[^\x20-\x7e]")
_ATOM_SAFE = frozenset("-_./&+,:;=@!~$'^`|#")
# Set by ENABLE IMAP4rev2 / UTF8=ACCEPT for the rest of that connection's task (RFC 9051 §5.1, RFC 6855 §3):
# mailbox names then go out as UTF-8. A context variable, because each session runs in a task of its own
# and names are written from many commands that need not know the mode.
UTF8_NAMES: ContextVar[bool] = ContextVar("imap_utf8_names", default=False)


def as_wire(value: str | bytes) -> str:
    """Bytes -> their latin-1 image; text -> its UTF-8 bytes' latin-1 image."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value.encode("utf-8", "surrogateescape").decode("latin-1")


def literal(value: str | bytes) -> str:
    wire = as_wire(value)
    return f"{{{len(wire)}}}\r\n{wire}"


def quote(value: str | bytes) -> str:
    """A quoted string, or a literal when the value cannot be quoted (8-bit, CR, LF, long)."""
    wire = as_wire(value)
    if len(wire) > 4000 or _UNQUOTABLE.search(wire):
        return f"{{{len(wire)}}}\r\n{wire}"  # not literal(wire): that would encode the image again
    return '"' + wire.replace("\\", "\\\\").replace('"', '\\"') + '"'


def nstring(value: str | bytes | None) -> str:
    return "NIL" if value is None else quote(value)


def astring_nil(value: str | bytes | None) -> str:
    return nstring(value)


def encode(line: str) -> bytes:
    return line.encode("latin-1")


def mailbox_name(name: str) -> str:
    """A mailbox name as LIST, STATUS and QUOTAROOT send it: modified UTF-7 (RFC 3501 §5.1.3), an atom
    when it is one, else quoted."""
    encoded = name if UTF8_NAMES.get() else mutf7.encode(name)  # quote() sends non-ASCII as UTF-8
    if encoded and all((c.isascii() and c.isalnum()) or c in _ATOM_SAFE for c in encoded):
        return encoded
    return quote(encoded)


def compress(numbers: list[int]) -> str:
    """[1,2,3,5] -> "1:3,5" (sequence-set form, in the given order for COPYUID pairing)."""
    if not numbers:
        return ""
    out = []
    start = prev = numbers[0]
    for n in numbers[1:]:
        if n == prev + 1:
            prev = n
            continue
        out.append(f"{start}:{prev}" if start != prev else str(start))
        start = prev = n
    out.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(out)
