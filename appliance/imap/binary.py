"""BINARY (RFC 3516): content with its Content-Transfer-Encoding removed, for FETCH BINARY[...] and
BINARY.SIZE[...].

A leaf part is its decoded body. A container (the whole message, a multipart, a message/rfc822) is its
bytes with every encoded leaf inside decoded and that leaf's Content-Transfer-Encoding field replaced by
``binary`` at the end of its header, as Dovecot serves it, so that the result is still a valid MIME
entity. An encoding the server does not know makes the FETCH fail with ``NO [UNKNOWN-CTE]`` (RFC 3516 §4.3)
rather than send undecoded data as if it were decoded.
"""

from __future__ import annotations

import binascii
import re

from appliance.imap.message import Message, Part, raw_header_lines
from appliance.imap.parser import Section

IDENTITY = frozenset({"", "7bit", "8bit", "binary"})
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")


class UnknownCTE(Exception):
    """The part's Content-Transfer-Encoding is not one of RFC 2045's."""


def binary_section(message: Message, section: Section) -> tuple[bytes, bool] | None:
    """(the content of BINARY[section], whether anything in it was decoded), or None when the part does not
    exist. Decoded content goes out as a literal8 (``~{n}``), as Dovecot sends it."""
    if not section.parts:
        entity = _entity(message.root)
        return (message.data, False) if entity is None else (entity, True)
    part = message.find(section.parts)
    if part is None:
        return None
    if _is_container(part):
        body = _container_body(part)
        return (part.body, False) if body is None else (body, True)
    if _encoding(part) in IDENTITY:
        return part.body, False
    return decode(part), True


def decode(part: Part) -> bytes:
    """A leaf part's body without its transfer encoding (RFC 2045 §6)."""
    encoding = _encoding(part)
    if encoding in IDENTITY:
        return part.body
    if encoding == "base64":
        # lenient as mail readers are: characters outside the alphabet are ignored, missing padding added
        clean = _NOT_BASE64.sub(b"", part.body.split(b"=", 1)[0])
        if len(clean) % 4 == 1:
            clean = clean[:-1]
        return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
    if encoding == "quoted-printable":
        return binascii.a2b_qp(part.body)
    raise UnknownCTE(encoding)


def _encoding(part: Part) -> str:
    raw = part.get("content-transfer-encoding")
    return raw.decode("ascii", "replace").strip().lower() if raw else ""


def _is_container(part: Part) -> bool:
    return bool(part.children) or part.message is not None or part.ctype == "multipart"


def _entity(part: Part) -> bytes | None:
    """The part's header and body with its encoded leaves decoded, or None when nothing changes."""
    if _is_container(part):
        body = _container_body(part)
        return None if body is None else part.header + body
    if _encoding(part) in IDENTITY:
        return None
    lines = [line for name, line in raw_header_lines(part.header) if name != "content-transfer-encoding"]
    return b"".join(lines) + b"Content-Transfer-Encoding: binary\r\n\r\n" + decode(part)


def _container_body(part: Part) -> bytes | None:
    """A container's body with its children's entities decoded, or None when none of them changes."""
    if part.message is not None:
        return _entity(part.message)
    data = part.body
    out: list[bytes] = []
    cursor = 0
    for child in part.children:
        new = _entity(child)
        if new is None:
            continue
        old = child.header + child.body
        at = data.find(old, cursor)
        if at < 0:  # cannot happen: a child is a slice of its parent's body
            continue
        out += [data[cursor:at], new]
        cursor = at + len(old)
    if not out:
        return None
    return b"".join(out) + data[cursor:]
