"""Sort and thread keys of stored messages (RFC 5256 §3, RFC 5957), from their cached headers.

Every header-derived key of a message is computed in one pass over its header and cached by
file path (message files are written once and never change, as ``message.cached_envelope``
relies on too), so a second SORT or THREAD of the same mailbox costs dictionary look-ups; the
header itself comes from ``message.cached_header``, shared with ENVELOPE and header SEARCH. The
index (``store/``) keeps no header column: the first SORT of a mailbox reads each file's header
once, as the first SEARCH SUBJECT does.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from appliance.imap.message import Message, cached_header, decode_words, parse_addresses
from appliance.imap.threading import Item, base_subject, casemap
from appliance.store import MessageInfo

_MSGID = re.compile(r"<([^<>\s]+)>")


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
        return casemap(decode_words(mailbox)) if mailbox else ""
    return ""


def _display(raw: bytes | None) -> str:
    """RFC 5957 §2: the first address's display name, or its addr-spec when it has none."""
    if raw is None:
        return ""
    for name, _, mailbox, host in parse_addresses(raw):
        # "user@host (Real Name)": a comment is no display name (as Dovecot sorts it)
        if name and not (b"<" not in raw and b"(" + name + b")" in raw):
            return casemap(decode_words(name))
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
    subject, reply = base_subject(decode_words(raw_subject) if raw_subject is not None else "")
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
