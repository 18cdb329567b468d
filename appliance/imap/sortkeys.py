"""Sort and thread keys of stored messages (RFC 5256 §3, RFC 5957), from their cached headers.

Every header-derived key of a message is computed in one pass over its header and cached by
file path (message files are written once and never change, as ``message.cached_envelope``
relies on too), so a second SORT or THREAD of the same mailbox costs dictionary look-ups; the
header itself comes from ``message.cached_header``, shared with ENVELOPE and header SEARCH. The
index (``store/``) keeps no header column: the first SORT of a mailbox reads each file's header
once, as the first SEARCH SUBJECT does.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import re
from dataclasses import dataclass

from appliance.imap.message import Message, cached_header, parse_addresses
from appliance.imap.threading import Item, base_subject, casemap
from appliance.store import MessageInfo

_MSGID = re.compile(r"<([^<>\s]+)>")
_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
_QP_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")


def _decoded_word(charset: bytes, encoding: bytes, text: bytes) -> str | None:
    """One RFC 2047 encoded word's text; None when it cannot be decoded (then it stays as it is)."""
    try:
        name = codecs.lookup(charset.split(b"*")[0].decode("ascii")).name  # RFC 2231 §5: charset*lang
        if encoding in b"Bb":
            data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
        else:
            data = _QP_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), text.replace(b"_", b" "))
        return data.decode(name, "replace")
    except (LookupError, UnicodeError, binascii.Error, ValueError):
        return None


def decode_header_text(raw: bytes) -> str:
    """A header's text with its encoded words decoded as Dovecot's ``message_header_decode`` does:
    an encoded word is recognised wherever it stands (not only between spaces, as ``email.header``
    wants), the white space between two adjacent encoded words is dropped (RFC 2047 §6.2) and no
    space is added, so that sort and thread keys equal Dovecot's."""
    out: list[str] = []
    pos = 0
    last_was_word = False
    for match in _ENCODED_WORD.finditer(raw):
        gap = raw[pos:match.start()]
        word = _decoded_word(match.group(1), match.group(2), match.group(3))
        if word is None:
            out.append((gap + match.group(0)).decode("utf-8", "replace"))
            last_was_word = False
        else:
            if gap and not (last_was_word and not gap.strip(b" \t\r\n")):
                out.append(gap.decode("utf-8", "replace"))
            out.append(word)
            last_was_word = True
        pos = match.end()
    out.append(raw[pos:].decode("utf-8", "replace"))
    return "".join(out)


@dataclass(frozen=True)
class HeaderKeys:
    """The header-derived keys of one message, each already in its comparison form."""

    subject: str  # casemapped base subject (RFC 5256 §2.1)
    reply: bool  # the subject carried Re:/Fwd: markers
    sent: float | None  # Date: as Unix time, None when missing or invalid
    from_: str
    to: str
    cc: str
    display_from: str
    display_to: str
    message_id: str | None
    references: tuple[str, ...]


def _first(message: Message, name: str) -> bytes | None:
    return message.top.get(name)


def _mailbox(raw: bytes | None) -> str:
    """RFC 5256: the addr-mailbox (local part) of the first address, casemapped."""
    if raw is None:
        return ""
    for _, _, mailbox, _ in parse_addresses(raw):
        return casemap(decode_header_text(mailbox)) if mailbox else ""
    return ""


def _display(raw: bytes | None) -> str:
    """RFC 5957 §2: the first address's display name, or its addr-spec when it has none."""
    if raw is None:
        return ""
    for name, _, mailbox, host in parse_addresses(raw):
        # "user@host (Real Name)": a comment is no display name (as Dovecot sorts it)
        if name and not (b"<" not in raw and b"(" + name + b")" in raw):
            return casemap(decode_header_text(name))
        spec = (mailbox or b"") + (b"@" + host if host else b"")
        return casemap(spec.decode("utf-8", "replace"))
    return ""


def _ids(raw: bytes | None) -> list[str]:
    if raw is None:
        return []
    return _MSGID.findall(raw.decode("utf-8", "replace"))


@functools.lru_cache(maxsize=100_000)
def header_keys(path: str) -> HeaderKeys:
    """All header keys of a stored message, parsed once (the file never changes under its name)."""
    message = Message(cached_header(path))
    raw_subject = _first(message, "subject")
    subject, reply = base_subject(decode_header_text(raw_subject) if raw_subject is not None else "")
    sent = message.sent_date()
    own = _ids(_first(message, "message-id"))
    references = _ids(_first(message, "references"))
    if not references:  # RFC 5256 §3 step 1: without References, the first In-Reply-To id
        references = _ids(_first(message, "in-reply-to"))[:1]
    return HeaderKeys(
        subject=casemap(subject), reply=reply, sent=sent.timestamp() if sent is not None else None,
        from_=_mailbox(_first(message, "from")), to=_mailbox(_first(message, "to")),
        cc=_mailbox(_first(message, "cc")), display_from=_display(_first(message, "from")),
        display_to=_display(_first(message, "to")), message_id=own[0] if own else None,
        references=tuple(references),
    )


def sent_date(info: MessageInfo, keys: HeaderKeys) -> float:
    """RFC 5256 §2.2: the Date: header's time, else the internal date."""
    return keys.sent if keys.sent is not None else float(info.timestamp)


def key_value(name: str, info: MessageInfo) -> str | float:
    """One sort key of one message (``name`` from ``parser.SORT_KEYS``)."""
    if name == "ARRIVAL":
        return float(info.timestamp)
    if name == "SIZE":
        return float(info.size)
    keys = header_keys(info.file)
    if name == "DATE":
        return sent_date(info, keys)
    if name == "SUBJECT":
        return keys.subject
    if name == "FROM":
        return keys.from_
    if name == "TO":
        return keys.to
    if name == "CC":
        return keys.cc
    if name == "DISPLAYFROM":
        return keys.display_from
    return keys.display_to


def thread_item(number: int, order: int, info: MessageInfo) -> Item:
    """What THREAD needs of one message."""
    keys = header_keys(info.file)
    return Item(number, order, sent_date(info, keys), keys.subject, keys.reply, keys.message_id,
                keys.references)
